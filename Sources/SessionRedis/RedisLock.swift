import ClusterLocks
import Logging
import SessionCore
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// A held lock: proof of ownership for `release` and `extend`.
public struct RedisLockLease: Sendable, Equatable, CustomStringConvertible {
    /// The lock's name.
    public let name: String
    /// 18 random bytes (base64url): the value stored in the lock key. Only
    /// the holder of this token can release or extend the lock.
    public let token: String
    /// Issued with this acquisition: strictly greater than the fencing token
    /// of every earlier acquisition of the same lock name. Hand it to the
    /// resource the lock protects, which rejects writes carrying a smaller
    /// token than one it has seen (a holder that stalled past its TTL).
    public let fencingToken: Int64
    /// When the lock expires at the latest, on this process's monotonic
    /// clock; counted from the moment the command was sent, so it errs early.
    /// `extend` moves it.
    public internal(set) var expiresAt: ContinuousClock.Instant

    /// Whether the TTL has run out: the lock may belong to someone else now.
    public var isExpired: Bool { ContinuousClock.now >= expiresAt }

    public var description: String {
        "lease(\(RedisLock.loggable(name)), fence \(fencingToken), token \(token.prefix(4))…)"
    }
}

/// A distributed lock on one Redis master, with fencing tokens.
///
/// - Acquire is `SET <prefix>{name} <token> NX PX <ttl>` and, in the same Lua
///   script, `INCR <prefix>fence:{name}`: a fencing token is issued if and
///   only if the lock was acquired, and tokens strictly increase per name.
///   The hash tag `{name}` puts both keys in one Redis Cluster slot.
/// - Release and extend compare the stored token first (compare-and-delete,
///   compare-and-pexpire, in Lua): a holder whose TTL ran out can never
///   release or extend the lock of the next holder.
/// - `acquire` waits between attempts in `BLPOP` on the lock's wake list,
///   onto which a release pushes one token: one waiter wakes per release,
///   with no polling. A holder that dies wakes nobody: the wait is bounded
///   by its TTL, as read in the failed attempt.
///
/// Limits, as with every single-master Redis lock: the TTL bounds how long a
/// stalled holder (GC pause, stopped process) can believe it still owns the
/// lock — only fencing tokens checked by the protected resource make that
/// safe. A failover to a replica that had not yet received the last writes
/// can hand the lock out twice and repeat fencing tokens. When an acquire
/// fails with a timeout after Redis executed it, the lock stays taken by
/// nobody until its TTL runs out.
///
/// Lock names longer than 16 characters (session IDs) are shortened in logs.
public final class RedisLock: Sendable {
    public let client: RedisClient
    public let keyPrefix: String
    /// How long a fence counter outlives its lock's last acquisition or
    /// extension; nil keeps it forever. With a retention, tokens strictly
    /// increase only while the lock name is used more often than that
    /// (afterwards they start again at 1), but names used once (session IDs)
    /// do not leave a key behind forever.
    public let fenceRetentionMillis: Int?
    /// Replicas that must acknowledge an acquisition (`WAIT`) before it is granted; nil: none.
    /// Without it, a primary that fails right after a grant may not have passed it on, and the
    /// promoted replica grants the lock again (with a repeated fencing token).
    public let durability: RedisDurability?
    /// The hash tag of a lock name (its Redis Cluster slot): the name itself by default.
    let hashTag: @Sendable (String) -> String
    let logger: Logger

    /// - Parameters:
    ///   - client: the Redis the locks live in.
    ///   - keyPrefix: the start of every lock and fence key; it must not contain braces.
    ///   - fenceRetentionMillis: how long a fence counter outlives its lock's last use
    ///     (`fenceRetentionMillis`); nil keeps it forever. Must be positive.
    ///   - durability: replicas that must acknowledge each acquisition (`WAIT`); an
    ///     acquisition they do not acknowledge in time is given back and fails.
    ///   - hashTag: the hash tag of a name's keys, when not the name
    ///     itself: `RedisSessionLock` puts a session's lock in its session's slot.
    ///   - logger: where timeouts, lost locks and failed releases are logged.
    public init(
        client: RedisClient, keyPrefix: String = "lock:", fenceRetentionMillis: Int? = nil,
        durability: RedisDurability? = nil, hashTag: @escaping @Sendable (String) -> String = { $0 }, logger: Logger
    ) {
        precondition(
            !keyPrefix.contains("{") && !keyPrefix.contains("}"),
            "the key prefix must not contain braces: the lock name is the hash tag")
        precondition((fenceRetentionMillis ?? 1) > 0, "fenceRetentionMillis must be positive")
        self.client = client
        self.keyPrefix = keyPrefix
        self.fenceRetentionMillis = fenceRetentionMillis
        self.durability = durability
        self.hashTag = hashTag
        self.logger = logger
    }

    /// The key holding the owner's token: `<prefix>{name}` (`<prefix>{tag}:name` with another hash tag).
    public func lockKey(_ name: String) -> [UInt8] { Array((keyPrefix + tagged(name)).utf8) }

    /// The key counting acquisitions: `<prefix>fence:{name}` (`<prefix>fence:{tag}:name`).
    public func fenceKey(_ name: String) -> [UInt8] { Array((keyPrefix + "fence:" + tagged(name)).utf8) }

    /// The list a release pushes a token onto, for one waiter's `BLPOP`: `<prefix>wake:{name}`.
    public func wakeKey(_ name: String) -> [UInt8] { Array((keyPrefix + "wake:" + tagged(name)).utf8) }

    private func tagged(_ name: String) -> String {
        let tag = hashTag(name)
        return tag == name ? "{\(name)}" : "{\(tag)}:\(name)"
    }

    /// One attempt: the lease, or nil when someone else holds the lock.
    /// Throws `RedisError` when Redis cannot be reached or fails.
    public func tryAcquire(_ name: String, ttlMillis: Int) throws -> RedisLockLease? {
        try attempt(name, ttlMillis: ttlMillis, token: Self.newToken()).lease
    }

    /// Tries until the lock is acquired or `timeoutMillis` has passed: the
    /// lease, or nil on timeout. Throws `RedisError` at once when Redis cannot
    /// be reached or fails.
    public func acquire(_ name: String, ttlMillis: Int, timeoutMillis: Int) throws -> RedisLockLease? {
        try acquire(name, token: Self.newToken(), ttlMillis: ttlMillis, timeoutMillis: timeoutMillis)
    }

    func acquire(_ name: String, token: String, ttlMillis: Int, timeoutMillis: Int) throws -> RedisLockLease? {
        precondition(timeoutMillis >= 0, "timeoutMillis must not be negative")
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        var attempts = 0
        while true {
            let (lease, holderTTL) = try attempt(name, ttlMillis: ttlMillis, token: token)
            if let lease { return lease }
            let left = deadline - monotonicMillis()
            if left <= 0 {
                logger.debug("lock wait timed out", metadata: ["lock": "\(Self.loggable(name))", "attempts": "\(attempts + 1)"])
                return nil
            }
            attempts += 1
            // Wait for a release's wake-up, or until the holder's TTL runs out (a holder that died
            // wakes nobody), whichever is first; within the command timeout, which bounds any reply.
            var wait = min(left, Int64(max(1, client.configuration.commandTimeoutMillis / 2)))
            if holderTTL >= 0 { wait = min(wait, holderTTL + 1) }
            try awaitRelease(name, millis: wait)
        }
    }

    /// Blocks in `BLPOP` on the lock's wake-up list for up to `millis`: a release pushes one
    /// token, which wakes one waiter (no herd, no polling).
    private func awaitRelease(_ name: String, millis: Int64) throws {
        let seconds = String(Double(max(1, millis)) / 1000)
        _ = try client.send(["BLPOP".redisBytes, wakeKey(name), Array(seconds.utf8)])
    }

    /// Deletes the lock if `lease` still owns it. False when it does not (its
    /// TTL ran out, and maybe someone else holds the lock now).
    @discardableResult
    public func release(_ lease: RedisLockLease) throws -> Bool {
        try release(lease.name, token: lease.token)
    }

    func release(_ name: String, token: String) throws -> Bool {
        try client.eval(Self.releaseScript, keys: [lockKey(name), wakeKey(name)], args: [token.redisBytes]).int == 1
    }

    /// Resets the lock's TTL to `ttlMillis` if `lease` still owns it, and
    /// moves `lease.expiresAt`. False when it does not own the lock any more.
    @discardableResult
    public func extend(_ lease: inout RedisLockLease, ttlMillis: Int) throws -> Bool {
        let sent = ContinuousClock.now
        guard try extend(lease.name, token: lease.token, ttlMillis: ttlMillis) else { return false }
        lease.expiresAt = sent + .milliseconds(ttlMillis)
        return true
    }

    func extend(_ name: String, token: String, ttlMillis: Int) throws -> Bool {
        precondition(ttlMillis > 0, "ttlMillis must be positive")
        let reply = try client.eval(
            Self.extendScript, keys: [lockKey(name), fenceKey(name)],
            args: [token.redisBytes, ttlMillis.redisBytes, (fenceRetentionMillis ?? 0).redisBytes])
        return reply.int == 1
    }

    /// Whether `lease` still owns its lock in Redis.
    public func isHeld(_ lease: RedisLockLease) throws -> Bool { try isHeld(lease.name, holder: lease.token) }

    /// Whether `holder` (a `LockLease.holder`) owns lock `name` in Redis.
    public func isHeld(_ name: String, holder: String) throws -> Bool {
        try client.send(["GET".redisBytes, lockKey(name)]).string == holder
    }

    private func attempt(_ name: String, ttlMillis: Int, token: String) throws -> (lease: RedisLockLease?, holderTTL: Int64) {
        precondition(ttlMillis > 0, "ttlMillis must be positive")
        // An empty hash tag `{}` would hash the whole key: the two keys could land in different slots.
        guard !name.isEmpty else { throw RedisError(.configuration, "a lock name must not be empty") }
        let sent = ContinuousClock.now
        let reply: RedisValue
        do {
            reply = try client.eval(
                Self.acquireScript, keys: [lockKey(name), fenceKey(name)],
                args: [token.redisBytes, ttlMillis.redisBytes, (fenceRetentionMillis ?? 0).redisBytes],
                durability: durability)
        } catch let error as RedisError where error.code == .notReplicated {
            _ = try? release(name, token: token)  // a grant the replicas may not have: not one to hold
            throw error
        }
        guard let items = reply.array, items.count == 2, let status = items[0].int, let value = items[1].int else {
            throw RedisError(.protocolViolation, "unexpected reply from the lock script: \(reply)")
        }
        if status == 1 {
            let lease = RedisLockLease(
                name: name, token: token, fencingToken: value, expiresAt: sent + .milliseconds(ttlMillis))
            logger.trace("lock acquired", metadata: ["lock": "\(Self.loggable(name))", "fence": "\(value)"])
            return (lease, 0)
        }
        return (nil, value)
    }

    static func newToken() -> String { secureRandomToken(byteCount: 18) }

    static func loggable(_ name: String) -> String { DistributedLock.loggable(name) }

    // MARK: - Scripts

    /// KEYS lock, fence; ARGV token, ttl, fence retention (0: forever).
    /// Returns {1, fencing token} when acquired, {0, the holder's PTTL} when not.
    static let acquireScript = RedisScript(name: "lock-acquire", source: """
        local ttl = tonumber(ARGV[2])
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl) then
          local fence = redis.call('INCR', KEYS[2])
          local keep = tonumber(ARGV[3])
          if keep > 0 then redis.call('PEXPIRE', KEYS[2], math.max(keep, ttl)) end
          return {1, fence}
        end
        return {0, redis.call('PTTL', KEYS[1])}
        """)

    /// KEYS lock, wake list; ARGV token. 1 when deleted (and one waiter woken), 0 when not the owner.
    /// The wake list holds one token at most, for a second at most (a waiter between its attempt and
    /// its BLPOP still finds it).
    static let releaseScript = RedisScript(name: "lock-release", source: """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          redis.call('DEL', KEYS[1])
          redis.call('RPUSH', KEYS[2], 1)
          redis.call('LTRIM', KEYS[2], 0, 0)
          redis.call('PEXPIRE', KEYS[2], 1000)
          return 1
        end
        return 0
        """)

    /// KEYS lock, fence; ARGV token, ttl, fence retention (0: forever).
    /// 1 when extended, 0 when not the owner. The fence counter never expires before the lock.
    static let extendScript = RedisScript(name: "lock-extend", source: """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        local ttl = tonumber(ARGV[2])
        redis.call('PEXPIRE', KEYS[1], ttl)
        local keep = tonumber(ARGV[3])
        if keep > 0 then redis.call('PEXPIRE', KEYS[2], math.max(keep, ttl)) end
        return 1
        """)
}
