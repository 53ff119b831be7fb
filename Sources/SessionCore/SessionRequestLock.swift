import Synchronization

/// Serializes the requests of one session, across every node of a cluster.
///
/// The session middleware's optional exclusive mode holds a session's lease
/// from before the handler runs until the session is committed, so two
/// requests of one session never interleave, whichever nodes serve them.
/// `DistributedSessionLock` implements it on any `DistributedLock` (Redis,
/// PostgreSQL, ZooKeeper).
///
/// The lock is lease-based: `acquire` returns a `SessionLockLease` that the
/// caller releases when done. No thread is held in between, so an async
/// handler can run while the lease is held (the implementation renews it in
/// the background for as long as it allows).
///
/// Contract for implementations of `acquire`:
/// - it may block (wait for the lock, call its backend): callers run it off
///   event loops and off Swift's cooperative pool;
/// - when access is not granted within the implementation's wait limit, throw
///   `SessionBusyError` (the middleware answers 503 `session_busy`);
/// - when the lock's backend cannot be reached, throw
///   `SessionStoreError(.unavailable)` (503 `session_store_unavailable`).
///
/// A handler must not, while holding the lease, wait for another request of
/// the same session (e.g. call its own service with the user's cookie): that
/// request would wait for the lock until it gives up with `SessionBusyError`.
public protocol SessionRequestLock: Sendable {
    /// Takes exclusive access to session `id`, waiting up to the lock's own
    /// limit. Blocking; see the contract above for its errors.
    func acquire(_ id: SessionID) throws -> SessionLockLease
}

extension SessionRequestLock {
    /// Runs `body` holding session `id`'s lease, and releases it afterwards
    /// (also when `body` throws). Errors of `body` pass through unchanged.
    public func withExclusiveAccess<T>(to id: SessionID, _ body: () throws -> T) throws -> T {
        let lease = try acquire(id)
        defer { lease.release() }
        return try body()
    }
}

/// Exclusive access to one session, held until `release()`.
///
/// Made by a `SessionRequestLock`, which passes the work that gives the
/// session back (stop renewing, delete the lock key) as `onRelease`. Release
/// may block on the lock's backend; it never throws (a lease that cannot be
/// released runs out with its TTL, which the lock logs).
public final class SessionLockLease: Sendable {
    /// The session this lease holds.
    public let sessionID: SessionID
    private let onRelease: Mutex<(@Sendable () -> Void)?>

    /// A lease on `sessionID`; `onRelease` runs once, at the first `release()`.
    public init(sessionID: SessionID, onRelease: @escaping @Sendable () -> Void) {
        self.sessionID = sessionID
        self.onRelease = Mutex(onRelease)
    }

    /// Whether `release()` has been called.
    public var isReleased: Bool { onRelease.withLock { $0 == nil } }

    /// A lease dropped without `release()` (a caller's bug) is released here, so
    /// the session is not locked until the lock's TTL runs out.
    deinit { release() }

    /// Gives the session back. Only the first call does anything.
    public func release() {
        let action = onRelease.withLock { action -> (@Sendable () -> Void)? in
            defer { action = nil }
            return action
        }
        action?()
    }
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
