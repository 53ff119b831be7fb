import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import Synchronization

/// The session middleware's work for one request, for async frameworks:
/// what the core's `SessionMiddleware` does around a MiniHTTP handler, done
/// around any framework's handler, with every store call on a
/// `BlockingExecutor`.
///
/// The cookie (signed or not), the `Session` semantics (lazy load, deltas,
/// increments, `regenerateID`, `invalidate`, commit) and the store error
/// answers are the core's own: this type calls `Session`,
/// `SessionMiddleware.verifiedID`, `cookieValue(for:)` and `httpError(for:)`.
/// What it repeats of `SessionMiddleware.respond` is the order of the steps
/// after the handler (prepare the commit, set the cookie, commit with the
/// idempotency record, replace the cookie if the session was started anew,
/// add the read token), because that method takes MiniHTTP types.
public final class SessionRequestManager: Sendable {
    /// Where sessions live.
    public let store: any SessionStore
    /// Cookie name, signing key, `Secure`, trusted proxies, exclusive mode: the core's settings.
    public let configuration: SessionConfiguration
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// Exclusive mode, when `configuration.exclusive` is set.
    public let exclusiveAccess: ExclusiveAccess?
    /// The core middleware, for its cookie codec and error answers.
    let core: SessionMiddleware
    let logger: Logger

    /// A manager for `store`. With `configuration.exclusive` set, each
    /// session's requests run one at a time (see `ExclusiveAccess`; its
    /// holder threads are `lockHolderThreads`).
    public init(
        store: any SessionStore, configuration: SessionConfiguration = SessionConfiguration(),
        executor: BlockingExecutor = .shared, lockHolderThreads: Int = 64, logger: Logger
    ) {
        self.store = store
        self.configuration = configuration
        self.executor = executor
        self.logger = logger
        core = SessionMiddleware(store: store, configuration: configuration, logger: logger)
        exclusiveAccess = configuration.exclusive.map { ExclusiveAccess(lock: $0, holderThreads: lockHolderThreads) }
    }

    /// Stops the exclusive mode's holder threads (the executor belongs to the caller).
    public func shutdown() async throws {
        try await exclusiveAccess?.shutdown()
    }

    /// The cookie value for an ID: the ID, plus its HMAC when signing.
    public func cookieValue(for id: SessionID) -> String { core.cookieValue(for: id) }

    /// The ID in a cookie value, or nil when malformed or wrongly signed.
    public func verifiedID(_ value: String) -> SessionID? { core.verifiedID(value) }

    /// Runs `next` with the request's (lazily loaded) session, then saves what
    /// changed and sets, replaces or expires the cookie on its response.
    ///
    /// - Parameters:
    ///   - cookie: the request's cookie of a name, if any.
    ///   - remoteAddress: the peer's address (for `trustedProxies`).
    ///   - forwardedProto: the request's `X-Forwarded-Proto`, if any.
    ///   - idempotency: the ticket of a claimed `Idempotency-Key`: changes
    ///     are then deferred and written with its record in one atomic step.
    /// - Throws: a `SessionErrorResponse` for store failures (503), a busy
    ///   session (503) or a session over the size cap (413), also when a
    ///   handler's own session call failed; other errors of `next` unchanged.
    public func respond<Response: SessionCookieResponse>(
        cookie: (String) -> String?, remoteAddress: String?, forwardedProto: String?,
        idempotency: IdempotencyTicket? = nil,
        next: (RequestSession) async throws -> Response
    ) async throws -> Response {
        let cookieID = cookie(configuration.cookieName).flatMap(core.verifiedID)
        let readToken = cookieID == nil ? nil : cookie(configuration.readTokenCookieName)
        let handle = RequestSession(
            store: store, executor: executor, id: cookieID, readToken: readToken, deferWrites: idempotency != nil,
            slotTag: idempotency?.request.slotTag)
        let secure = isSecure(remoteAddress: remoteAddress, forwardedProto: forwardedProto)
        do {
            if let exclusiveAccess, let cookieID {
                return try await exclusiveAccess.run(cookieID) {
                    try await handleRequest(handle, secure: secure, idempotency: idempotency, next: next)
                }
            }
            return try await handleRequest(handle, secure: secure, idempotency: idempotency, next: next)
        } catch let error as SessionStoreError {
            logger.error("session store failed", metadata: ["error": "\(error)"])
            throw SessionErrorResponse(SessionMiddleware.httpError(for: error))
        }
    }

    private func handleRequest<Response: SessionCookieResponse>(
        _ handle: RequestSession, secure: Bool, idempotency: IdempotencyTicket?,
        next: (RequestSession) async throws -> Response
    ) async throws -> Response {
        var response = try await next(handle)
        guard let session = handle.loaded?.core else { return response }
        // The cookie is decided first, so an idempotency record holds the final response.
        let planned = session.prepareCommit()
        setCookie(planned, on: &response, secure: secure)
        var record: IdempotencyRecord? = nil
        if let idempotency { record = idempotency.record(for: try await response.storedResponse()) }
        let (store, finalRecord) = (store, record)
        let (action, recorded, token) = try await executor.run {
            () throws -> (Session.CookieAction, Bool, String?) in
            let (action, recorded): (Session.CookieAction, Bool)
            do {
                (action, recorded) = try session.commit(idempotencyRecord: finalRecord)
            } catch let error as SessionStoreError where error.code == .idempotencyKeyCompleted {
                idempotency?.markOvertaken()
                throw error
            }
            let token = session.wroteToStore ? session.id.flatMap { store.readToken(for: $0) } : nil
            return (action, recorded, token)
        }
        if recorded { idempotency?.markRecorded() }
        if action != planned {
            // The session expired during the request and was started anew.
            response.removeSetCookies(named: configuration.cookieName)
            setCookie(action, on: &response, secure: secure)
        }
        if let token {
            response.appendSetCookie(
                cookie(name: configuration.readTokenCookieName, value: token, secure: secure, maxAge: nil).headerValue)
        }
        return response
    }

    private func setCookie<Response: SessionCookieResponse>(
        _ action: Session.CookieAction, on response: inout Response, secure: Bool
    ) {
        switch action {
        case .none:
            break
        case .set(let id):
            response.appendSetCookie(
                cookie(name: configuration.cookieName, value: core.cookieValue(for: id), secure: secure, maxAge: nil)
                    .headerValue)
            response.setNoStore()
        case .expire:
            response.appendSetCookie(
                cookie(name: configuration.cookieName, value: "", secure: secure, maxAge: 0).headerValue)
        }
    }

    private func cookie(name: String, value: String, secure: Bool, maxAge: Int?) -> SetCookie {
        SetCookie(
            name: name, value: value, path: "/", domain: configuration.cookieDomain, maxAge: maxAge, secure: secure,
            httpOnly: true, sameSite: .lax)
    }

    /// `Secure` when configured, or when a trusted balancer says the client came over HTTPS.
    func isSecure(remoteAddress: String?, forwardedProto: String?) -> Bool {
        if configuration.secureCookie { return true }
        guard let remoteAddress, configuration.trustedProxies.contains(remoteAddress), let forwardedProto else {
            return false
        }
        // With several proxies the first value is the client's.
        var first = Substring(forwardedProto.split(separator: ",").first ?? "")
        while first.first == " " { first.removeFirst() }
        while first.last == " " { first.removeLast() }
        return first.lowercased() == "https"
    }
}

/// A request's session, loaded from the store (on the executor) the first
/// time a handler asks for it.
public final class RequestSession: Sendable {
    /// Where sessions live.
    public let store: any SessionStore
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// The (verified) ID the request's cookie carried.
    public let cookieID: SessionID?
    let readToken: String?
    let deferWrites: Bool
    /// The slot tag of a session this request creates (`Session.init`).
    let slotTag: String?
    private let current = Mutex<ClusterSession?>(nil)

    init(
        store: any SessionStore, executor: BlockingExecutor, id: SessionID?, readToken: String?, deferWrites: Bool,
        slotTag: String?
    ) {
        self.store = store
        self.executor = executor
        cookieID = id
        self.readToken = readToken
        self.deferWrites = deferWrites
        self.slotTag = slotTag
    }

    /// The session, if a handler asked for it.
    public var loaded: ClusterSession? { current.withLock { $0 } }

    /// The session: loaded on first use (after catching up to the client's
    /// read token, with the replicated store). Throws `SessionStoreError`.
    public func session() async throws -> ClusterSession {
        if let session = loaded { return session }
        let (store, id, readToken) = (store, cookieID, readToken)
        let snapshot = try await executor.run { () throws -> SessionSnapshot? in
            if let id, let readToken { _ = try store.catchUp(id, to: readToken) }
            return try id.flatMap { try store.load($0) }
        }
        let session = ClusterSession(
            core: Session(store: store, snapshot: snapshot, deferWrites: deferWrites, slotTag: slotTag),
            executor: executor)
        return current.withLock { current in
            if let current { return current }
            current = session
            return session
        }
    }
}
