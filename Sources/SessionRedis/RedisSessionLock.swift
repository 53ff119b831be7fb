import Logging
import SessionCore
import SystemSupport

/// Serializes one session's requests across nodes (the session middleware's
/// exclusive mode) with a `RedisLock` named by the session ID.
///
/// The lease is short (`leaseMillis`, so a node that dies holding it blocks
/// the session only that long) and renewed while the request runs, for at
/// most `maxHoldMillis`. A request that waits longer than `waitMillis` fails
/// with `SessionBusyError` (503 `session_busy`); when Redis cannot be reached
/// it fails with `SessionStoreError(.unavailable)`.
///
/// Every well-formed session ID a client sends takes a lock (that is what
/// makes it exclusive), so sign cookies (`SessionConfiguration.signingKeys`)
/// to keep forged IDs from creating lock keys.
public final class RedisSessionLock: SessionRequestLock {
    public let lock: RedisLock
    public let leaseMillis: Int
    public let waitMillis: Int
    public let maxHoldMillis: Int
    let logger: Logger

    public init(lock: RedisLock, leaseMillis: Int = 3_000, waitMillis: Int = 5_000, maxHoldMillis: Int = 60_000, logger: Logger) {
        precondition(leaseMillis > 0 && waitMillis >= 0 && maxHoldMillis >= 0, "bad session lock timings")
        self.lock = lock
        self.leaseMillis = leaseMillis
        self.waitMillis = waitMillis
        self.maxHoldMillis = maxHoldMillis
        self.logger = logger
    }

    /// Locks under `<keyPrefix>{<slot tag>}:<session id>`, in the session's
    /// own slot (`SessionID.slotTag`); fence counters are kept 10 minutes.
    public convenience init(
        client: RedisClient, keyPrefix: String = "lock:session:", leaseMillis: Int = 3_000, waitMillis: Int = 5_000,
        maxHoldMillis: Int = 60_000, logger: Logger
    ) {
        self.init(
            lock: RedisLock(
                client: client, keyPrefix: keyPrefix, fenceRetentionMillis: 600_000,
                hashTag: { String($0.prefix(SessionID.slotTagLength)) }, logger: logger),
            leaseMillis: leaseMillis, waitMillis: waitMillis, maxHoldMillis: maxHoldMillis, logger: logger)
    }

    /// Waits up to `waitMillis` for the session's lock; the lease is renewed
    /// in the background until released, for at most `maxHoldMillis`.
    public func acquire(_ id: SessionID) throws -> SessionLockLease {
        let start = monotonicMillis()
        let lease: RedisLockLease?
        do {
            lease = try lock.acquire(id.rawValue, ttlMillis: leaseMillis, timeoutMillis: waitMillis)
        } catch let error as RedisError {
            throw SessionStoreError(.unavailable, "Redis (session lock): \(error.message)")
        }
        guard let lease else {
            let waited = Int(monotonicMillis() - start)
            logger.debug("session lock wait timed out", metadata: ["session": "\(id)", "waited_ms": "\(waited)"])
            throw SessionBusyError(waitedMillis: waited)
        }
        return SessionLockLease(
            sessionID: id, onRelease: lock.hold(lease, ttlMillis: leaseMillis, keepAliveMillis: maxHoldMillis))
    }
}
