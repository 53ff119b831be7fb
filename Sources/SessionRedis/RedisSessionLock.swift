import ClusterLocks
import Logging
import SessionCore

extension DistributedSessionLock {
    /// A session lock in Redis: locks under `<keyPrefix>{<slot tag>}:<session id>`,
    /// in the session's own Redis Cluster slot (`SessionID.slotTag`); fence
    /// counters are kept 10 minutes.
    public static func redis(
        client: RedisClient, keyPrefix: String = "lock:session:", leaseMillis: Int = 3_000, waitMillis: Int = 5_000,
        maxHoldMillis: Int = 60_000, logger: Logger
    ) -> DistributedSessionLock {
        let service = RedisLock(
            client: client, keyPrefix: keyPrefix, fenceRetentionMillis: 600_000,
            hashTag: { String($0.prefix(SessionID.slotTagLength)) }, logger: logger)
        return DistributedSessionLock(
            lock: DistributedLock(service: service, logger: logger), leaseMillis: leaseMillis, waitMillis: waitMillis,
            maxHoldMillis: maxHoldMillis, logger: logger)
    }
}
