/// Serializes the requests of one session, across every node of a cluster.
///
/// The session middleware's optional exclusive mode runs each request that
/// carries a session ID (handler and commit) inside `withExclusiveAccess`, so
/// two requests of one session never interleave, whichever nodes serve them.
/// `SessionRedis.RedisSessionLock` implements it on a Redis lock.
///
/// Contract for implementations:
/// - errors thrown by `body` pass through unchanged;
/// - when access is not granted within the implementation's wait limit, throw
///   `SessionBusyError` (the middleware answers 503 `session_busy`);
/// - when the lock's backend cannot be reached, throw
///   `SessionStoreError(.unavailable)` (503 `session_store_unavailable`).
///
/// A handler must not, while holding the lock, wait for another request of
/// the same session (e.g. call its own service with the user's cookie): that
/// request would wait for the lock until it gives up with `SessionBusyError`.
public protocol SessionRequestLock: Sendable {
    func withExclusiveAccess<T>(to id: SessionID, _ body: () throws -> T) throws -> T
}

/// Exclusive access to a session was not granted in time: another request of
/// the same session held it for the whole wait.
public struct SessionBusyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// How long the request waited, in milliseconds.
    public var waitedMillis: Int

    public init(waitedMillis: Int) {
        self.waitedMillis = waitedMillis
    }

    public var description: String {
        "session busy: another request of this session held it for \(waitedMillis) ms"
    }
}
