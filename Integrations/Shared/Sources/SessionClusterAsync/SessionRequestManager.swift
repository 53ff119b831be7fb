import Logging
import SessionCore
import Synchronization

/// The session middleware's work for one request, for async frameworks: the
/// core's `SessionRequest` steps (cookie, lazy load, commit, cookies of the
/// response) around any framework's handler, with every store call on a
/// `BlockingExecutor`. Nothing of the cycle is repeated here.
public final class SessionRequestManager: Sendable {
    /// Where sessions live.
    public let store: any SessionStore
    /// Cookie name, signing key, `Secure`, trusted proxies, exclusive mode: the core's settings.
    public let configuration: SessionConfiguration
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// Exclusive mode, when `configuration.exclusive` is set.
    public let exclusiveAccess: ExclusiveAccess?
    let logger: Logger

    /// A manager for `store`. With `configuration.exclusive` set, each
    /// session's requests run one at a time (see `ExclusiveAccess`; the
    /// lock's calls run on `lockThreads` threads of their own).
    public init(
        store: any SessionStore, configuration: SessionConfiguration = SessionConfiguration(),
        executor: BlockingExecutor = .shared, lockThreads: Int = 64, logger: Logger
    ) {
        self.store = store
        self.configuration = configuration
        self.executor = executor
        self.logger = logger
        exclusiveAccess = configuration.exclusive.map { ExclusiveAccess(lock: $0, lockThreads: lockThreads) }
    }

    /// Stops the exclusive mode's lock threads (the executor belongs to the caller).
    public func shutdown() async throws {
        try await exclusiveAccess?.shutdown()
    }

    /// The cookie value for an ID: the ID, plus its HMAC when signing.
    public func cookieValue(for id: SessionID) -> String { configuration.cookieCodec.value(for: id) }

    /// The ID in a cookie value, or nil when malformed or wrongly signed.
    public func verifiedID(_ value: String) -> SessionID? { configuration.cookieCodec.verifiedID(value) }

    /// Runs `next` with the request's (lazily loaded) session, then saves what
    /// changed and sets, replaces or expires the cookie on its response.
    ///
    /// - Parameters:
    ///   - cookie: the request's cookie of a name, if any.
    ///   - remoteAddress: the peer's address (for `trustedProxies`).
    ///   - forwardedProto: the request's `X-Forwarded-Proto`, if any.
    ///   - idempotency: the ticket of a claimed `Idempotency-Key`: changes
    ///     are then deferred and written with its record in one atomic step.
    ///   - next: the rest of the request (the handler), given the request's
    ///     session; its response gets the session's cookies.
    /// - Throws: a `SessionErrorAnswer` for store failures (503), a busy
    ///   session (503) or a session over the size cap (413), also when a
    ///   handler's own session call failed; other errors of `next` unchanged.
    public func respond<Response: SessionCookieResponse>(
        cookie: (String) -> String?, remoteAddress: String?, forwardedProto: String?,
        idempotency: IdempotencyTicket? = nil,
        next: (RequestSession) async throws -> Response
    ) async throws -> Response {
        let request = SessionRequest(
            store: store, configuration: configuration, cookie: cookie, remoteAddress: remoteAddress,
            forwardedProto: forwardedProto, idempotency: idempotency)
        let handle = RequestSession(request, executor: executor)
        do {
            if let exclusiveAccess, let cookieID = request.cookieID {
                return try await exclusiveAccess.run(cookieID) { try await commit(handle, next: next) }
            }
            return try await commit(handle, next: next)
        } catch let error as SessionStoreError {
            if error.code != .idempotencyKeyCompleted {  // the idempotency middleware answers with the recorded response
                logger.error("session store failed", metadata: ["error": "\(error)"])
            }
            throw SessionErrorAnswer(error)
        }
    }

    private func commit<Response: SessionCookieResponse>(
        _ handle: RequestSession, next: (RequestSession) async throws -> Response
    ) async throws -> Response {
        var response = try await next(handle)
        guard let commit = handle.request.prepareCommit(on: &response) else { return response }
        var record: IdempotencyRecord? = nil
        if let ticket = handle.request.idempotency { record = ticket.record(for: try await response.storedResponse()) }
        let finalRecord = record
        let outcome = try await executor.run { try commit.run(record: finalRecord) }
        outcome.apply(to: &response)
        return response
    }
}

/// A request's session, loaded from the store (on the executor) the first
/// time a handler asks for it.
public final class RequestSession: Sendable {
    /// The request's session cycle (`SessionRequest`; its calls block: the manager runs them on the executor).
    let request: SessionRequest
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    private let current = Mutex<ClusterSession?>(nil)

    init(_ request: SessionRequest, executor: BlockingExecutor) {
        self.request = request
        self.executor = executor
    }

    /// Where sessions live.
    public var store: any SessionStore { request.store }

    /// The (verified) ID the request's cookie carried.
    public var cookieID: SessionID? { request.cookieID }

    /// The session, if a handler asked for it.
    public var loaded: ClusterSession? { current.withLock { $0 } }

    /// The session: loaded on first use (after catching up to the client's
    /// read token, with the replicated store). Throws `SessionStoreError`.
    public func session() async throws -> ClusterSession {
        if let session = loaded { return session }
        let request = request
        let core = try await executor.run { try request.session() }
        return current.withLock { current in
            if let current { return current }
            let session = ClusterSession(core: core, executor: executor)
            current = session
            return session
        }
    }
}
