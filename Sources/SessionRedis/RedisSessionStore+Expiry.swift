import SessionCore
import Synchronization
import SystemSupport

/// Expiry events of logged-in sessions on Redis, once per cluster, without
/// keyspace notifications.
///
/// While someone listens (`events.current`), a login adds the session to the
/// expiry schedule, a sorted set `<prefix>expiry-schedule` of
/// `<principal>\n<session ID>` scored with the session's expiry time (one
/// command at login; a logout or revoke removes it, a regeneration moves it).
/// Requests that only use a session leave it alone, so its score falls behind
/// when the session is used. The sweeper (`startExpirySweeper`, on every
/// node) reads the entries due: a session still there is rescheduled at its
/// key's TTL; one that is gone is claimed with `ZREM`, which only one node can
/// win, and that node reports it `expired`. An expiry is thus reported once,
/// within one sweep interval of it (two when a node's sweep was already under
/// way), by a node whose sweeper runs; while none runs, the schedule waits, and
/// it expires itself a grace of two sweep intervals after its last entry.
extension RedisSessionStore {
    /// The expiry schedule: one key (one slot) for the whole deployment.
    public var expiryScheduleKey: [UInt8] { Array("\(keyPrefix)expiry-schedule".utf8) }

    /// The schedule's member for a session.
    func scheduleMember(_ id: SessionID, principal: String) -> [UInt8] { Array("\(principal)\n\(id.rawValue)".utf8) }

    /// Adds a logged-in session to the schedule, while someone listens.
    func schedule(_ id: SessionID, principal: String, deadlineMillis: Int64) throws {
        guard events.isListened else { return }
        _ = try run(
            Self.scheduleScript, keys: [expiryScheduleKey],
            args: [scheduleMember(id, principal: principal), deadlineMillis.redisBytes, expiryGraceMillis.redisBytes])
    }

    /// Removes a session that ended by a request from the schedule.
    func unschedule(_ id: SessionID, principal: String) throws {
        _ = try redis { try client.send(["ZREM".redisBytes, expiryScheduleKey, scheduleMember(id, principal: principal)]) }
    }

    /// Moves a regenerated session's entry; due at once, so the sweeper sets its real time.
    func reschedule(from old: SessionID, to new: SessionID, principal: String) throws {
        try unschedule(old, principal: principal)
        try schedule(new, principal: principal, deadlineMillis: SessionClock.system.nowMillis())
    }

    /// How long the schedule outlives its last entry: two sweep intervals.
    var expiryGraceMillis: Int64 { 2 * Int64(sweepIntervalMillis.load(ordering: .relaxed)) }

    /// Sweeps the schedule every `intervalMillis` on a background timer until `stopExpirySweeper()`.
    public func startExpirySweeper(intervalMillis: Int = 30_000) {
        sweepIntervalMillis.store(intervalMillis, ordering: .relaxed)
        expirySweeper.start(label: "redis-expiry-sweeper", intervalMillis: intervalMillis) { [weak self] in
            guard let self else { return }
            do {
                _ = try sweepExpired()
            } catch {
                logger.warning("the expiry sweep failed; the next one tries again", metadata: ["error": "\(error)"])
            }
        }
    }

    public func stopExpirySweeper() { expirySweeper.stop() }

    /// One pass over the entries due: reschedules live sessions, claims and reports the expired
    /// ones. Returns how many this node reported.
    @discardableResult
    public func sweepExpired(batch: Int = 500) throws -> Int {
        let schedule = expiryScheduleKey
        var reported = 0
        while true {
            let now = SessionClock.system.nowMillis()
            let due = try redis {
                try client.send([
                    "ZRANGEBYSCORE".redisBytes, schedule, "-inf".redisBytes, now.redisBytes, "LIMIT".redisBytes,
                    "0".redisBytes, batch.redisBytes,
                ])
            }
            let members = due.array?.compactMap(\.bytes) ?? []
            for member in members {
                guard let newline = member.firstIndex(of: 10),
                    let id = SessionID(rawValue: String(decoding: member[(newline + 1)...], as: UTF8.self))
                else {
                    _ = try redis { try client.send(["ZREM".redisBytes, schedule, member]) }
                    continue
                }
                let ttl = try redis { try client.send(["PTTL".redisBytes, key(for: id)]) }.int ?? -2
                if ttl != -2 {  // still there (-1: no TTL, which the store never leaves: look again an idle timeout on)
                    let next = now + (ttl >= 0 ? ttl : expiry.idleTimeoutMillis)
                    _ = try redis { try client.send(["ZADD".redisBytes, schedule, "XX".redisBytes, next.redisBytes, member]) }
                } else if try redis({ try client.send(["ZREM".redisBytes, schedule, member]) }).int == 1 {
                    let principal = String(decoding: member[..<newline], as: UTF8.self)
                    events.emit(.expired, id, principal: principal, atMillis: now)
                    reported += 1
                }
            }
            if members.count < batch { return reported }
        }
    }

    /// KEYS[1] the schedule; ARGV member, expiry time, grace. Adds the entry; the schedule lives
    /// until its latest entry's time plus the grace.
    static let scheduleScript = RedisScript(name: "session-schedule-expiry", source: """
        redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
        local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
        redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + tonumber(ARGV[3]))
        return 1
        """)
}
