import ClusterLocks
import Logging
import SystemSupport

/// Serializes one session's requests across nodes (the session middleware's
/// exclusive mode) with a `DistributedLock` named by the session ID, on any
/// lock service: Redis, PostgreSQL, ZooKeeper.
///
/// The lease is short (`leaseMillis`, so a node that dies holding it blocks
/// the session only that long) and renewed while the request runs, for at
/// most `maxHoldMillis`. A request that waits longer than `waitMillis` fails
/// with `SessionBusyError` (503 `session_busy`); when the lock service cannot
/// be reached it fails with `SessionStoreError(.unavailable)`.
///
/// Every well-formed session ID a client sends takes a lock (that is what
/// makes it exclusive), so sign cookies (`SessionConfiguration.signingKeys`)
/// to keep forged IDs from creating lock entries.
public final class DistributedSessionLock: SessionRequestLock {
    public let lock: DistributedLock
    public let leaseMillis: Int
    public let waitMillis: Int
    public let maxHoldMillis: Int
    let logger: Logger

    public init(lock: DistributedLock, leaseMillis: Int = 3_000, waitMillis: Int = 5_000, maxHoldMillis: Int = 60_000, logger: Logger) {
        precondition(leaseMillis > 0 && waitMillis >= 0 && maxHoldMillis >= 0, "bad session lock timings")
        self.lock = lock
        self.leaseMillis = leaseMillis
        self.waitMillis = waitMillis
        self.maxHoldMillis = maxHoldMillis
        self.logger = logger
    }

    /// Waits up to `waitMillis` for the session's lock; the lease is renewed
    /// in the background until released, for at most `maxHoldMillis`. Each
    /// request is its own owner: two requests of one session never share it.
    public func acquire(_ id: SessionID) throws -> SessionLockLease {
        let start = monotonicMillis()
        let lease: LockLease
        do {
            lease = try lock.acquire(id.rawValue, by: LockOwner(), leaseMillis: leaseMillis, waitMillis: waitMillis)
        } catch let error as LockError where error.code == .timedOut {
            let waited = Int(monotonicMillis() - start)
            logger.debug("session lock wait timed out", metadata: ["session": "\(id)", "waited_ms": "\(waited)"])
            throw SessionBusyError(waitedMillis: waited)
        } catch let error as LockError {
            throw SessionStoreError(.unavailable, "\(lock.service.kind) (session lock): \(error.message)")
        }
        return SessionLockLease(
            sessionID: id, onRelease: lock.hold(lease, leaseMillis: leaseMillis, keepAliveMillis: maxHoldMillis))
    }
}
