import MiniHTTP
import SessionCore

/// Exclusive mode (`SessionConfiguration.exclusive`): the requests of one
/// session run one at a time, on whichever nodes they land.
///
/// Without it, two concurrent requests of one session never lose each
/// other's changes to *different* attributes, and `increment` is atomic, but
/// a handler's read-modify-write of one attribute (read, compute, `set`) can
/// be overwritten by a concurrent one. With it, the handler and the commit of
/// a request that carries a session ID run while the request holds the
/// session's `SessionLockLease`, so such updates are never lost.
///
/// - A request without a (well-formed, correctly signed) session ID takes no
///   lock: it has no session to race on yet.
/// - Not granted in time → 503 `session_busy` with `Retry-After: 1`.
/// - Lock backend down → 503 `session_store_unavailable` with `Retry-After: 1`.
///
/// The price: a session's requests queue up (a slow request delays the next
/// ones of the same user) and every request with a session costs two more
/// round trips to the lock's backend.
extension SessionMiddleware {
    /// Runs `body` holding the session's exclusive lock when exclusive mode is
    /// on and the request carries a session ID; runs it directly otherwise.
    func exclusively<T>(_ id: SessionID?, _ body: () throws -> T) throws -> T {
        guard let lock = configuration.exclusive, let id else { return try body() }
        let lease: SessionLockLease
        do {
            lease = try lock.acquire(id)
        } catch let busy as SessionBusyError {
            logger.info("session busy", metadata: ["session": "\(id)", "waited_ms": "\(busy.waitedMillis)"])
            throw HTTPError(SessionErrorAnswer(busy))
        }
        defer { lease.release() }  // after the commit, before the response goes out
        return try body()
    }
}
