import Logging
import MiniHTTP
import SessionCore
import Synchronization

/// Settings of the session cookie and middleware.
public struct SessionConfiguration: Sendable {
    public var cookieName: String
    /// Always mark the cookie `Secure`. When false it is still marked `Secure`
    /// for requests that arrived over HTTPS through a trusted balancer.
    public var secureCookie: Bool
    /// Peer addresses whose `X-Forwarded-Proto` is believed (the balancers).
    public var trustedProxies: Set<String>
    /// Signs and verifies cookie values. With signing keys, values are
    /// `<id>.<HMAC-SHA256(id)>`: forged or tampered IDs are rejected without
    /// a store lookup. Set through the throwing initializers or `setSigningKeys`.
    public private(set) var cookieCodec: SessionCookieCodec
    /// Cookie `Domain`, if any.
    public var cookieDomain: String?
    /// Exclusive mode: when set, the requests of one session run one at a
    /// time across the cluster (see `ExclusiveSessions.swift`).
    public var exclusive: (any SessionRequestLock)?

    /// The cookie carrying the read token of stores with read-your-writes
    /// (`SessionStore.readToken`): `<cookieName>_rt`.
    public var readTokenCookieName: String { cookieName + "_rt" }

    /// The signing keys (the first signs, all verify); empty for unsigned cookies.
    public var signingKeys: [[UInt8]] { cookieCodec.signingKeys }

    /// Unsigned cookies (see the `signingKeys:` initializer).
    public init(
        cookieName: String = "sid", secureCookie: Bool = false, trustedProxies: Set<String> = ["127.0.0.1", "::1"],
        cookieDomain: String? = nil, exclusive: (any SessionRequestLock)? = nil
    ) {
        self.cookieName = cookieName
        self.secureCookie = secureCookie
        self.trustedProxies = trustedProxies
        cookieCodec = .unsigned
        self.cookieDomain = cookieDomain
        self.exclusive = exclusive
    }

    /// Signed cookies: the first of `signingKeys` signs, every one verifies
    /// (rotation). Throws for a key shorter than 16 bytes.
    public init(
        signingKeys: [[UInt8]], cookieName: String = "sid", secureCookie: Bool = false,
        trustedProxies: Set<String> = ["127.0.0.1", "::1"], cookieDomain: String? = nil,
        exclusive: (any SessionRequestLock)? = nil
    ) throws(SigningKeyError) {
        self.init(
            cookieName: cookieName, secureCookie: secureCookie, trustedProxies: trustedProxies,
            cookieDomain: cookieDomain, exclusive: exclusive)
        try setSigningKeys(signingKeys)
    }

    /// One signing key, or nil for unsigned cookies. Throws for a key shorter than 16 bytes.
    public init(
        signingKey: [UInt8]?, cookieName: String = "sid", secureCookie: Bool = false,
        trustedProxies: Set<String> = ["127.0.0.1", "::1"], cookieDomain: String? = nil,
        exclusive: (any SessionRequestLock)? = nil
    ) throws(SigningKeyError) {
        try self.init(
            signingKeys: signingKey.map { [$0] } ?? [], cookieName: cookieName, secureCookie: secureCookie,
            trustedProxies: trustedProxies, cookieDomain: cookieDomain, exclusive: exclusive)
    }

    /// Replaces the signing keys (the first signs, all verify).
    public mutating func setSigningKeys(_ keys: [[UInt8]]) throws(SigningKeyError) {
        cookieCodec = try SessionCookieCodec(signingKeys: keys)
    }

    /// Whose idempotency records a request sees, from the value of its session
    /// cookie (nil: none): its verified session, or nobody's.
    public func idempotencyScope(cookieValue: String?) -> IdempotencyScope {
        cookieValue.flatMap(cookieCodec.verifiedID).map { .session($0) } ?? .anonymous
    }
}

/// Gives each request its `Session`: reads the cookie, loads the session the
/// first time a handler asks, saves only what changed after the handler, and
/// sets or expires the cookie.
///
/// Store failures become 503 with a JSON error; a session over the size cap
/// becomes 413. An ID the store does not know is never adopted.
public struct SessionMiddleware: HTTPMiddleware {
    public let store: any SessionStore
    public let configuration: SessionConfiguration
    let logger: Logger

    public init(store: any SessionStore, configuration: SessionConfiguration = SessionConfiguration(), logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    public func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
        let cookieID = request.cookie(configuration.cookieName).flatMap(verifiedID)
        let idempotency = request.storage[IdempotencyContext.Key.self]
        let readToken = cookieID == nil ? nil : request.cookie(configuration.readTokenCookieName)
        let handle = LazySession(
            store: store, id: cookieID, readToken: readToken, deferWrites: idempotency != nil,
            slotTag: idempotency?.request.slotTag)
        var request = request
        request.storage[LazySession.Key.self] = handle
        do {
            return try exclusively(cookieID) {
                var response = try next(request)
                guard let session = handle.loaded else { return response }
                // The cookie is decided first, so an idempotency record holds the final response.
                let planned = session.prepareCommit()
                setCookie(planned, on: &response, request: request)
                let (action, recorded) = try session.commit(idempotencyRecord: idempotency?.record(for: response))
                if recorded { idempotency?.markRecorded() }
                if action != planned {
                    // The session expired during the request and was started anew: its cookie
                    // changes; the handler's own cookies stay.
                    let prefix = configuration.cookieName + "="
                    response.headers.remove(name: "Set-Cookie") { $0.hasPrefix(prefix) }
                    setCookie(action, on: &response, request: request)
                }
                if session.wroteToStore, let id = session.id, let token = store.readToken(for: id) {
                    response.setCookie(cookie(
                        name: configuration.readTokenCookieName, value: token, request: request, maxAge: nil))
                }
                return response
            }
        } catch let error as SessionStoreError where error.code == .idempotencyKeyCompleted {
            idempotency?.markOvertaken()  // IdempotencyMiddleware answers with the recorded response
            throw Self.httpError(for: error)
        } catch let error as SessionStoreError {
            logger.error("session store failed", metadata: ["error": "\(error)", "path": "\(request.path)"])
            throw Self.httpError(for: error)
        }
    }

    private func setCookie(_ action: Session.CookieAction, on response: inout HTTPResponse, request: HTTPRequest) {
        switch action {
        case .none:
            break
        case .set(let id):
            response.setCookie(cookie(value: cookieValue(for: id), request: request, maxAge: nil))
            response.headers.replaceOrAdd(name: "Cache-Control", value: "no-store")
        case .expire:
            response.setCookie(cookie(value: "", request: request, maxAge: 0))
        }
    }

    /// The HTTP error a store error becomes.
    public static func httpError(for error: SessionStoreError) -> HTTPError {
        switch error.code {
        case .unavailable, .capacityExceeded:
            HTTPError(
                status: 503, code: "session_store_\(error.code.rawValue)", message: error.message,
                headers: ["Retry-After": "1"])
        case .sessionTooLarge:
            HTTPError(status: 413, code: "session_too_large", message: error.message)
        case .typeMismatch, .invalidValue:
            HTTPError(status: 500, code: "session_\(error.code.rawValue)", message: error.message)
        case .idempotencyKeyCompleted:
            HTTPError(
                status: 409, code: "idempotency_key_completed", message: error.message, headers: ["Retry-After": "0"])
        }
    }

    private func cookie(
        name: String? = nil, value: String, request: HTTPRequest, maxAge: Int?
    ) -> SetCookie {
        SetCookie(
            name: name ?? configuration.cookieName, value: value, path: "/", domain: configuration.cookieDomain,
            maxAge: maxAge, secure: isSecure(request), httpOnly: true, sameSite: .lax)
    }

    private func isSecure(_ request: HTTPRequest) -> Bool {
        if configuration.secureCookie { return true }
        guard let peer = request.remoteAddress, configuration.trustedProxies.contains(peer),
            let proto = request.headers["X-Forwarded-Proto"]
        else { return false }
        // With several proxies the first value is the client's.
        let first = proto.split(separator: ",").first.map { String($0).trimmingSpaces } ?? ""
        return first.lowercased() == "https"
    }

    /// The cookie value for an ID: the ID, plus its HMAC when signing.
    public func cookieValue(for id: SessionID) -> String { configuration.cookieCodec.value(for: id) }

    /// The ID in a cookie value, or nil when malformed or signed by none of the keys.
    public func verifiedID(_ value: String) -> SessionID? { configuration.cookieCodec.verifiedID(value) }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

/// Loads the session on first use.
final class LazySession: Sendable {
    enum Key: RequestStorageKey { typealias Value = LazySession }

    let store: any SessionStore
    let id: SessionID?
    /// The read token the client last received, if any.
    let readToken: String?
    let deferWrites: Bool
    /// The slot tag of a session this request creates (`Session.init`).
    let slotTag: String?
    private let current = Mutex<Session?>(nil)

    init(store: any SessionStore, id: SessionID?, readToken: String? = nil, deferWrites: Bool, slotTag: String? = nil) {
        self.store = store
        self.id = id
        self.readToken = readToken
        self.deferWrites = deferWrites
        self.slotTag = slotTag
    }

    /// The session, if a handler asked for it.
    var loaded: Session? { current.withLock { $0 } }

    func session() throws -> Session {
        if let session = loaded { return session }
        if let id, let readToken { _ = try store.catchUp(id, to: readToken) }
        let snapshot = try id.flatMap { try store.load($0) }
        let session = Session(store: store, snapshot: snapshot, deferWrites: deferWrites, slotTag: slotTag)
        return current.withLock { current in
            if let current { return current }
            current = session
            return session
        }
    }
}

extension HTTPRequest {
    /// This request's session. Loaded from the store on first use.
    ///
    /// Throws `SessionStoreError` when the store fails, and a 500 `HTTPError`
    /// when `SessionMiddleware` is not installed in front of the handler.
    public func session() throws -> Session {
        guard let lazy = storage[LazySession.Key.self] else {
            throw HTTPError(
                status: 500, code: "session_middleware_missing",
                message: "SessionMiddleware is not installed in front of this handler")
        }
        return try lazy.session()
    }
}
