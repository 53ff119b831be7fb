import Synchronization

/// What the session machinery needs of a transport's response: its
/// `Set-Cookie` and `Cache-Control` headers. Each binding's response type conforms.
public protocol SessionResponseHeaders {
    /// Adds a `Set-Cookie` header with this value.
    mutating func appendSetCookie(_ headerValue: String)
    /// Removes the `Set-Cookie` headers that set the cookie called `name` (and no others).
    mutating func removeSetCookies(named name: String)
    /// Replaces `Cache-Control` with `no-store` (responses that carry a new session ID).
    mutating func setNoStore()
}

/// One request's session, from its cookie to the cookies of its response,
/// with no transport: every binding (the MiniHTTP middleware, the Hummingbird
/// and Vapor adapters) drives the same steps.
///
/// 1. `init` reads the session cookie (and the read token) and decides `Secure`.
/// 2. The handler asks for `session()` — loaded on first use (blocking: an
///    async binding runs it on its executor).
/// 3. After the handler, `prepareCommit(on:)` sets the cookie the session
///    plans to have on the response (so an idempotency record holds the final
///    response) and returns the commit; nil when no handler asked.
/// 4. `SessionCommit.run(record:)` writes the changes, with the request's
///    idempotency record in the same atomic step (blocking).
/// 5. `SessionCommitOutcome.apply(to:)` replaces the cookie if the session
///    expired meanwhile and was started anew, and adds the read token.
public final class SessionRequest: Sendable {
    /// Where sessions live.
    public let store: any SessionStore
    /// Cookie name and keys, `Secure`, trusted proxies.
    public let configuration: SessionConfiguration
    /// The verified session ID of the request's cookie, if any.
    public let cookieID: SessionID?
    /// The read token the client last received, if any (read-your-writes).
    public let readToken: String?
    /// Whether the response's cookies get `Secure`.
    public let secure: Bool
    /// The claimed `Idempotency-Key` of the request: changes are then written with its record.
    public let idempotency: IdempotencyTicket?
    /// The store, when its copies may lag behind (read tokens). Cast when needed, not per
    /// request: a request without a read token or a write never pays for it.
    var readYourWrites: (any ReadYourWritesStore)? { store as? any ReadYourWritesStore }
    private let current = Mutex<Session?>(nil)

    /// - Parameters:
    ///   - store: where the session is loaded from and its changes are written.
    ///   - configuration: cookie name and keys, `Secure`, trusted proxies.
    ///   - cookie: the request's cookie of a name, if any.
    ///   - remoteAddress: the peer's address (for `trustedProxies`).
    ///   - forwardedProto: the request's `X-Forwarded-Proto`, if any.
    ///   - idempotency: the claimed `Idempotency-Key` of the request, if any: the session's
    ///     changes are then held back and written with the request's record in one step.
    public init(
        store: any SessionStore, configuration: SessionConfiguration, cookie: (String) -> String?,
        remoteAddress: String?, forwardedProto: String?, idempotency: IdempotencyTicket? = nil
    ) {
        self.store = store
        self.configuration = configuration
        let id = cookie(configuration.cookieName).flatMap(configuration.cookieCodec.verifiedID)
        cookieID = id
        readToken = id == nil ? nil : cookie(configuration.readTokenCookieName)
        secure = configuration.isSecure(remoteAddress: remoteAddress, forwardedProto: forwardedProto)
        self.idempotency = idempotency
    }

    /// The session, if a handler asked for it.
    public var loaded: Session? { current.withLock { $0 } }

    /// The session: loaded on first use, after catching up to the client's read token
    /// (replicated store). Blocking; throws `SessionStoreError`.
    public func session() throws -> Session {
        if let session = loaded { return session }
        if let id = cookieID, let readToken, let readYourWrites { _ = try readYourWrites.catchUp(id, to: readToken) }
        let snapshot = try cookieID.flatMap { try store.load($0) }
        let session = Session(
            store: store, snapshot: snapshot, deferWrites: idempotency != nil, slotTag: idempotency?.request.slotTag)
        return current.withLock { current in
            if let current { return current }
            current = session
            return session
        }
    }

    /// After the handler: sets the cookie the session plans to have on `response`, and
    /// returns the commit to run; nil when no handler asked for the session.
    public func prepareCommit<Response: SessionResponseHeaders>(on response: inout Response) -> SessionCommit? {
        guard let session = loaded else { return nil }
        let planned = session.prepareCommit()
        setCookie(planned, on: &response)
        return SessionCommit(request: self, session: session, planned: planned)
    }

    func setCookie<Response: SessionResponseHeaders>(_ action: Session.CookieAction, on response: inout Response) {
        switch action {
        case .none:
            break
        case .set(let id):
            let value = configuration.cookieCodec.value(for: id)
            response.appendSetCookie(configuration.cookie(name: configuration.cookieName, value: value, secure: secure).headerValue)
            response.setNoStore()
        case .expire:
            response.appendSetCookie(
                configuration.cookie(name: configuration.cookieName, value: "", secure: secure, maxAge: 0).headerValue)
        }
    }
}

/// The write at the end of a request (`SessionRequest.prepareCommit(on:)`).
public struct SessionCommit: Sendable {
    let request: SessionRequest
    let session: Session
    let planned: Session.CookieAction

    /// Writes the session's changes, with `record` (the request's idempotency record, made
    /// from the response as it now stands) in the same atomic step. Blocking. Marks the
    /// request's ticket recorded, or overtaken when another run completed its key first
    /// (then throws `idempotencyKeyCompleted`: nothing was written).
    public func run(record: IdempotencyRecord?) throws -> SessionCommitOutcome {
        let (action, recorded): (Session.CookieAction, Bool)
        do {
            (action, recorded) = try session.commit(idempotencyRecord: record)
        } catch let error as SessionStoreError where error.code == .idempotencyKeyCompleted {
            request.idempotency?.markOvertaken()
            throw error
        }
        if recorded { request.idempotency?.markRecorded() }
        let token = session.wroteToStore ? session.id.flatMap { request.readYourWrites?.readToken(for: $0) } : nil
        return SessionCommitOutcome(request: request, replaced: action != planned ? action : nil, readToken: token)
    }
}

/// What a commit changes in the response's cookies.
public struct SessionCommitOutcome: Sendable {
    let request: SessionRequest
    /// The session expired during the request and was started anew: its cookie changes.
    let replaced: Session.CookieAction?
    let readToken: String?

    /// Replaces the session cookie when it changed (the handler's own cookies stay) and adds the read token.
    public func apply<Response: SessionResponseHeaders>(to response: inout Response) {
        let configuration = request.configuration
        if let replaced {
            response.removeSetCookies(named: configuration.cookieName)
            request.setCookie(replaced, on: &response)
        }
        if let readToken {
            response.appendSetCookie(
                configuration.cookie(name: configuration.readTokenCookieName, value: readToken, secure: request.secure)
                    .headerValue)
        }
    }
}
