import ClusterLocks
import Foundation
import Logging
import SessionCore
import SessionRedis
import Synchronization
import Testing
import TestSupport

/// A counter with no synchronization at all: only a working lock keeps its
/// read–sleep–write updates from getting lost.
private final class UnguardedCounter: @unchecked Sendable {
    var value = 0
}

private func millisSince(_ start: ContinuousClock.Instant) -> Int {
    let elapsed = ContinuousClock.now - start
    return Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
}

private func sleepMillis(_ ms: Int) { usleep(UInt32(ms * 1000)) }

/// `lock` behind the generic front: reentrancy, keep-alive, `LockError`s.
private func locks(_ lock: RedisLock) -> DistributedLock { DistributedLock(service: lock, logger: quietLogger()) }

extension DistributedSessionLock {
    /// The Redis lock a `DistributedSessionLock.redis` runs on.
    fileprivate var redis: RedisLock { lock.service as! RedisLock }
}

private func makeLock(_ client: RedisClient, prefix: String, fenceRetentionMillis: Int? = nil) -> RedisLock {
    RedisLock(client: client, keyPrefix: prefix, fenceRetentionMillis: fenceRetentionMillis, logger: quietLogger())
}

/// The Redis Cluster slot of a key: CRC16-XMODEM of its hash tag (or of the key) mod 16384.
private func clusterSlot(_ key: [UInt8]) -> Int {
    var hashed = key[...]
    if let open = key.firstIndex(of: UInt8(ascii: "{")),
        let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
    {
        hashed = key[(open + 1)..<close]
    }
    var crc: UInt16 = 0
    for byte in hashed {
        crc ^= UInt16(byte) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
    }
    return Int(crc) % 16384
}

/// What needs no Redis: key layout, argument checks, an unreachable server.
@Suite struct RedisLockUnitTests {
    /// A client for a port nothing listens on.
    static func unreachableClient() -> RedisClient {
        RedisClient(
            configuration: RedisConfiguration(endpoint: .direct(host: "127.0.0.1", port: 1), connectTimeoutMillis: 200),
            logger: quietLogger())
    }

    @Test func lockAndFenceKeysShareAClusterSlot() {
        let lock = makeLock(Self.unreachableClient(), prefix: "lock:")
        #expect(lock.lockKey("orders") == Array("lock:{orders}".utf8))
        #expect(lock.fenceKey("orders") == Array("lock:fence:{orders}".utf8))
        for name in ["orders", "a}b", "{x}", "x{y", SessionID.generate().rawValue, "ünïcode"] {
            #expect(clusterSlot(lock.lockKey(name)) == clusterSlot(lock.fenceKey(name)), "name \(name)")
            #expect(lock.lockKey(name) != lock.fenceKey(name))
        }
        // The slot check itself is not trivially true (reference values from the Redis Cluster spec).
        #expect(clusterSlot(Array("123456789".utf8)) == 0x31C3 % 16384)
        #expect(clusterSlot(Array("{user1000}.following".utf8)) == clusterSlot(Array("{user1000}.followers".utf8)))
        #expect(clusterSlot(Array("lock:a".utf8)) != clusterSlot(Array("lock:fence:a".utf8)))
    }

    @Test func aSessionsLockIsInTheSessionsSlot() {
        let client = Self.unreachableClient()
        let lock = DistributedSessionLock.redis(client: client, logger: quietLogger()).redis
        let store = RedisSessionStore(client: client, logger: quietLogger())
        let id = SessionID.generate()
        #expect(lock.lockKey(id.rawValue) == Array("lock:session:{\(id.slotTag)}:\(id.rawValue)".utf8))
        #expect(clusterSlot(lock.lockKey(id.rawValue)) == clusterSlot(store.key(for: id)))
        #expect(clusterSlot(lock.fenceKey(id.rawValue)) == clusterSlot(store.key(for: id)))
    }

    @Test func anUnreachableRedisIsAnErrorNotATimeout() throws {
        let lock = makeLock(Self.unreachableClient(), prefix: "lock:")
        let start = ContinuousClock.now
        // An acquire timeout of 2 minutes: a lock that retried an unreachable Redis until then would
        // take 60 times longer than this bound, which is itself 150 times the connect timeout.
        #expect(throws: RedisError.self) { _ = try lock.acquire("x", ttlMillis: 1000, timeoutMillis: 120_000) }
        #expect(millisSince(start) < 30_000, "fails at once instead of retrying for the whole timeout")
        #expect(throws: RedisError.self) { _ = try lock.tryAcquire("x", ttlMillis: 1000) }
        #expect {
            try locks(lock).withLock("x", leaseMillis: 1000, waitMillis: 100) { _ in Issue.record("body ran without the lock"); return }
        } throws: { ($0 as? LockError)?.code == .unavailable }
    }

    @Test func anEmptyNameIsRefused() {
        let lock = makeLock(Self.unreachableClient(), prefix: "lock:")
        #expect(throws: RedisError(.configuration, "a lock name must not be empty")) {
            _ = try lock.tryAcquire("", ttlMillis: 1000)
        }
    }

    @Test func theSessionLockReportsAnUnreachableRedisAsUnavailable() {
        let sessionLock = DistributedSessionLock.redis(client: Self.unreachableClient(), logger: quietLogger())
        do {
            try sessionLock.withExclusiveAccess(to: SessionID.generate()) { Issue.record("body ran without the lock"); return }
            Issue.record("no error")
        } catch let error as SessionStoreError {
            #expect(error.code == .unavailable)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

@Suite(.enabled(if: TestRedis.available, "needs REDIS_URL"), .serialized, .tags(.integration))
struct RedisLockTests {
    @Test func eightContendersNeverOverlapAndFencingTokensIncrease() throws {
        try Self.eightContendersNeverOverlap(client: try TestRedis.client(poolSize: 8))
    }

    /// 8 threads take one lock 30 times each and race on an unguarded counter inside it.
    static func eightContendersNeverOverlap(client: RedisClient) throws {
        let lock = makeLock(client, prefix: TestRedis.uniquePrefix())
        let threads = 8
        let rounds = 30
        let counter = UnguardedCounter()
        let inside = Mutex(0)
        let mostInside = Mutex(0)
        let fences = Mutex<[Int64]>([])
        let failures = Mutex<[String]>([])
        let finished = onThreads(threads, seconds: 90) { _ in
            for _ in 0..<rounds {
                do {
                    guard let lease = try lock.acquire("race", ttlMillis: 10_000, timeoutMillis: 30_000) else {
                        failures.withLock { $0.append("acquire timed out") }
                        continue
                    }
                    let now = inside.withLock { n -> Int in
                        n += 1
                        return n
                    }
                    mostInside.withLock { $0 = max($0, now) }
                    fences.withLock { $0.append(lease.fencingToken) }
                    // The deliberate race: read, sleep, write.
                    let seen = counter.value
                    usleep(UInt32.random(in: 200...1500))
                    counter.value = seen + 1
                    inside.withLock { $0 -= 1 }
                    if try !lock.release(lease) { failures.withLock { $0.append("release found another owner") } }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        try #require(finished, "contenders did not finish in time")
        #expect(failures.withLock { $0 } == [])
        #expect(mostInside.withLock { $0 } == 1)
        #expect(counter.value == threads * rounds, "lost updates: the lock let two holders in")
        let tokens = fences.withLock { $0 }
        #expect(tokens.count == threads * rounds)
        // In acquisition order (appended inside the lock): strictly increasing, and consecutive
        // from 1, because a failed attempt issues no token.
        #expect(tokens == (1...Int64(threads * rounds)).map { $0 })
    }

    @Test func fencingTokensIncreaseAcrossNodesAndOnlyWithAcquisitions() throws {
        let prefix = TestRedis.uniquePrefix()
        // Two "nodes": separate clients and lock objects, one Redis.
        let nodeA = makeLock(try TestRedis.client(), prefix: prefix)
        let nodeB = makeLock(try TestRedis.client(), prefix: prefix)
        var last: Int64 = 0
        for round in 0..<20 {
            let (holder, other) = round % 2 == 0 ? (nodeA, nodeB) : (nodeB, nodeA)
            let lease = try #require(try holder.acquire("job", ttlMillis: 5000, timeoutMillis: 1000))
            #expect(lease.fencingToken > last)
            // Failed attempts while it is held issue no token.
            for _ in 0..<3 { #expect(try other.tryAcquire("job", ttlMillis: 5000) == nil) }
            #expect(try holder.release(lease))
            last = lease.fencingToken
        }
        #expect(last == 20)
        // Every name has its own counter.
        let other = try #require(try nodeA.tryAcquire("another-job", ttlMillis: 5000))
        #expect(other.fencingToken == 1)
        try nodeA.release(other)
    }

    @Test func tokensAreRandomAndLong() throws {
        let lock = makeLock(try TestRedis.client(), prefix: TestRedis.uniquePrefix())
        var tokens: Set<String> = []
        for _ in 0..<50 {
            let lease = try #require(try lock.tryAcquire("t", ttlMillis: 5000))
            #expect(lease.token.utf8.count >= 22, "at least 16 random bytes")
            tokens.insert(lease.token)
            try lock.release(lease)
        }
        #expect(tokens.count == 50)
    }

    @Test func anExpiredHolderCannotReleaseOrExtendTheNextHoldersLock() throws {
        let prefix = TestRedis.uniquePrefix()
        let client = try TestRedis.client()
        let lock = makeLock(client, prefix: prefix)
        var old = try #require(try lock.tryAcquire("res", ttlMillis: 100))
        sleepMillis(200)
        #expect(old.isExpired)
        let new = try #require(try lock.tryAcquire("res", ttlMillis: 5000), "the lock expired, so it is free")
        #expect(new.fencingToken > old.fencingToken)
        #expect(try lock.release(old) == false)
        #expect(try lock.extend(&old, ttlMillis: 60_000) == false)
        #expect(try lock.isHeld(new))
        #expect(try lock.isHeld(old) == false)
        // The old holder's extend did not touch the new holder's TTL.
        let ttl = try #require(try client.send(["PTTL".redisBytes, lock.lockKey("res")]).int)
        #expect(ttl > 0 && ttl <= 5000)
        #expect(try lock.release(new))
        #expect(try lock.release(new) == false, "a second release finds nothing")
    }

    @Test func acquireGivesUpAtItsTimeout() throws {
        let prefix = TestRedis.uniquePrefix()
        let holder = makeLock(try TestRedis.client(), prefix: prefix)
        let waiter = makeLock(try TestRedis.client(), prefix: prefix)
        let held = try #require(try holder.tryAcquire("busy", ttlMillis: 10_000))
        for timeout in [0, 50, 300] {
            let start = ContinuousClock.now
            #expect(try waiter.acquire("busy", ttlMillis: 1000, timeoutMillis: timeout) == nil)
            // Only a lower bound, which load cannot break: the wait never ends before its timeout.
            // (How long past it the call returns is the machine's business, not this test's.)
            let elapsed = millisSince(start)
            #expect(elapsed >= timeout - 1, "gave up early (\(elapsed) ms of \(timeout))")
        }
        #expect(throws: LockError(.timedOut, "'busy' not acquired within 100 ms")) {
            try locks(waiter).withLock("busy", leaseMillis: 1000, waitMillis: 100) { _ in Issue.record("body ran"); return }
        }
        #expect(try holder.isHeld(held))
        try holder.release(held)
    }

    @Test func aWaiterGetsTheLockSoonAfterReleaseOrExpiry() throws {
        let prefix = TestRedis.uniquePrefix()
        let holder = makeLock(try TestRedis.client(), prefix: prefix)
        let waiter = makeLock(try TestRedis.client(), prefix: prefix)

        // Released after 150 ms: the waiter, still waiting, gets it then (and not before). Its
        // timeout, 30 s, is 200 times the hold: only a waiter that stopped retrying misses it.
        let first = try #require(try holder.tryAcquire("w", ttlMillis: 60_000))
        let released = Atomic<Bool>(false)
        Thread {
            sleepMillis(150)
            released.store(true, ordering: .sequentiallyConsistent)
            _ = try? holder.release(first)
        }.start()
        let second = try #require(try waiter.acquire("w", ttlMillis: 10_000, timeoutMillis: 30_000))
        let releasedFirst = released.load(ordering: .sequentiallyConsistent)
        #expect(releasedFirst, "the waiter got in only after the release")
        #expect(second.fencingToken == first.fencingToken + 1)

        // Never released, TTL 200 ms: the waiter gets it once it has run out (not before).
        try waiter.release(second)
        let abandoned = try #require(try holder.tryAcquire("w", ttlMillis: 200))
        let third = try #require(try waiter.acquire("w", ttlMillis: 10_000, timeoutMillis: 30_000))
        #expect(abandoned.isExpired, "the waiter got in only after the holder's TTL ran out")
        #expect(third.fencingToken > abandoned.fencingToken)
        try waiter.release(third)
    }

    @Test func theOwnerCanExtend() throws {
        let prefix = TestRedis.uniquePrefix()
        let client = try TestRedis.client()
        let lock = makeLock(client, prefix: prefix)
        let rival = makeLock(try TestRedis.client(), prefix: prefix)
        // TTL 30 s, extended to 10 min: no real time has to pass, the TTLs show the extension.
        var lease = try #require(try lock.tryAcquire("ext", ttlMillis: 30_000))
        let before = lease.expiresAt
        #expect(try lock.extend(&lease, ttlMillis: 600_000))
        #expect(lease.expiresAt > before + .milliseconds(500_000))
        #expect(try lock.isHeld(lease))
        #expect(!lease.isExpired)
        #expect(try rival.tryAcquire("ext", ttlMillis: 1000) == nil)
        let ttl = try #require(try client.send(["PTTL".redisBytes, lock.lockKey("ext")]).int)
        #expect(ttl > 30_000 && ttl <= 600_000, "past the original TTL: \(ttl) ms")
        #expect(try lock.release(lease))
        #expect(try lock.extend(&lease, ttlMillis: 600_000) == false, "nothing to extend after release")
        #expect(try client.send(["EXISTS".redisBytes, lock.lockKey("ext")]).int == 0)
    }

    @Test func withLockReleasesAfterTheBodyAlsoWhenItThrows() throws {
        struct Boom: Error, Equatable {}
        let lock = makeLock(try TestRedis.client(), prefix: TestRedis.uniquePrefix())
        let (value, lease) = try locks(lock).withLock("body", leaseMillis: 5000, waitMillis: 1000) { lease in
            (try lock.isHeld("body", holder: lease.holder) ? 42 : -1, lease)
        }
        #expect(value == 42)
        #expect(try lock.isHeld("body", holder: lease.holder) == false)
        #expect(throws: Boom()) {
            try locks(lock).withLock("body", leaseMillis: 5000, waitMillis: 1000) { _ in throw Boom() }
        }
        let after = try #require(try lock.tryAcquire("body", ttlMillis: 5000), "released after the throw")
        #expect(after.fencingToken == 3)
        try lock.release(after)
    }

    @Test func keepAliveHoldsTheLockPastItsTTLButNotForever() throws {
        let prefix = TestRedis.uniquePrefix()
        let lock = makeLock(try TestRedis.client(), prefix: prefix)
        let rival = makeLock(try TestRedis.client(), prefix: prefix)

        // TTL 3 s, renewed every second while the body runs: the body watches the key's TTL go up
        // again twice (two renewals; waited for up to 30 s, ten times the TTL), and nobody else gets in.
        let client = try TestRedis.client()
        try locks(lock).withLock("slow", leaseMillis: 3_000, waitMillis: 1000, keepAliveMillis: 600_000) { (lease: LockLease) throws -> Void in
            var renewals = 0
            var previous = Int64.max
            let renewed = waitUntil(timeout: 30) {
                guard let ttl = try? client.send(["PTTL".redisBytes, lock.lockKey("slow")]).int, ttl > 0 else { return false }
                if ttl > previous { renewals += 1 }
                previous = ttl
                return renewals >= 2
            }
            #expect(renewed, "the lease was not renewed twice")
            #expect(try lock.isHeld("slow", holder: lease.holder))
            #expect(try rival.tryAcquire("slow", ttlMillis: 1000) == nil, "nobody else gets in while it is renewed")
        }
        #expect(try rival.tryAcquire("slow", ttlMillis: 1000).map { try rival.release($0) } == true, "released after")

        // Renewal for at most 200 ms: a body that hangs loses the lock one TTL after that (about
        // 500 ms; the rival tries for up to 20 s, 40 times that, so only endless renewal fails).
        let taken = Mutex<Bool?>(nil)
        let start = ContinuousClock.now
        try locks(lock).withLock("hung", leaseMillis: 300, waitMillis: 1000, keepAliveMillis: 200) { lease in
            while millisSince(start) < 20_000 && taken.withLock({ $0 }) == nil {
                sleepMillis(25)
                if let other = try rival.tryAcquire("hung", ttlMillis: 5000) {
                    // Not before the holder's first TTL ran out (its own lease, never renewed, says so).
                    taken.withLock { $0 = lease.isExpired }
                    try rival.release(other)
                }
            }
        }
        guard let expiredWhenTaken = taken.withLock({ $0 }) else {
            Issue.record("the lock was renewed forever")
            return
        }
        #expect(expiredWhenTaken, "the rival got in before the holder's TTL ran out")
    }

    @Test func fenceCountersCanExpireButNeverBeforeTheirLock() throws {
        let prefix = TestRedis.uniquePrefix()
        let client = try TestRedis.client()
        // Retention 30 s, TTLs of 2 and 5 min: every bound below leaves 30 s for the commands
        // between a write and its PTTL.
        let lock = makeLock(client, prefix: prefix, fenceRetentionMillis: 30_000)
        let forever = makeLock(client, prefix: TestRedis.uniquePrefix())
        var lease = try #require(try lock.tryAcquire("f", ttlMillis: 120_000))
        var fenceTTL = try #require(try client.send(["PTTL".redisBytes, lock.fenceKey("f")]).int)
        #expect(fenceTTL > 90_000 && fenceTTL <= 120_000, "at least the lock's TTL")
        #expect(try lock.extend(&lease, ttlMillis: 300_000))
        fenceTTL = try #require(try client.send(["PTTL".redisBytes, lock.fenceKey("f")]).int)
        #expect(fenceTTL > 270_000, "extended with the lock")
        try lock.release(lease)
        let short = try #require(try lock.tryAcquire("g", ttlMillis: 100))
        fenceTTL = try #require(try client.send(["PTTL".redisBytes, lock.fenceKey("g")]).int)
        #expect(fenceTTL > 1_000 && fenceTTL <= 30_000, "the retention when longer than the TTL")
        try lock.release(short)
        // Without a retention the counter stays.
        let kept = try #require(try forever.tryAcquire("h", ttlMillis: 100))
        #expect(try client.send(["PTTL".redisBytes, forever.fenceKey("h")]).int == -1)
        try forever.release(kept)
    }

    @Test func theSessionLockSerializesASessionAndReportsBusy() throws {
        let client = try TestRedis.client(poolSize: 8)
        let prefix = TestRedis.uniquePrefix()
        let sessionLock = DistributedSessionLock.redis(
            client: client, keyPrefix: prefix, leaseMillis: 2000, waitMillis: 10_000, logger: quietLogger())
        let id = SessionID.generate()
        let counter = UnguardedCounter()
        let failures = Mutex<[String]>([])
        let finished = onThreads(8, seconds: 60) { _ in
            for _ in 0..<10 {
                do {
                    try sessionLock.withExclusiveAccess(to: id) {
                        let seen = counter.value
                        usleep(UInt32.random(in: 200...1500))
                        counter.value = seen + 1
                    }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        try #require(finished)
        #expect(failures.withLock { $0 } == [])
        #expect(counter.value == 80)

        // Errors of the body pass through unchanged, and the lock is released.
        struct HandlerFailed: Error, Equatable {}
        #expect(throws: HandlerFailed()) { try sessionLock.withExclusiveAccess(to: id) { throw HandlerFailed() } }

        // Held elsewhere for longer than the wait: busy, and the body never runs.
        let impatient = DistributedSessionLock.redis(
            client: client, keyPrefix: prefix, leaseMillis: 2000, waitMillis: 200, logger: quietLogger())
        let other = try #require(try sessionLock.redis.tryAcquire(id.rawValue, ttlMillis: 60_000))
        do {
            try impatient.withExclusiveAccess(to: id) { Issue.record("body ran while the session was locked"); return }
            Issue.record("no error")
        } catch let error as SessionBusyError {
            #expect(error.waitedMillis >= 199, "it waited its 200 ms before giving up")
        }
        try sessionLock.redis.release(other)
        // Another session is not blocked by this one.
        try impatient.withExclusiveAccess(to: SessionID.generate()) {}
    }

    @Test func aSessionLeaseIsRenewedWithoutItsHolderAndReleasedOnce() throws {
        let client = try TestRedis.client(poolSize: 4)
        let prefix = TestRedis.uniquePrefix()
        let sessionLock = DistributedSessionLock.redis(
            client: client, keyPrefix: prefix, leaseMillis: 3_000, waitMillis: 100, logger: quietLogger())
        let id = SessionID.generate()
        let lease = try sessionLock.acquire(id)
        #expect(lease.sessionID == id)
        // With no thread inside the lock, it is renewed in the background: its TTL goes up again,
        // twice (a renewal every second; waited for up to 30 s, ten times the lease).
        var renewals = 0
        var previous = Int64.max
        let renewed = waitUntil(timeout: 30) {
            guard let ttl = try? client.send(["PTTL".redisBytes, sessionLock.redis.lockKey(id.rawValue)]).int, ttl > 0
            else { return false }
            if ttl > previous { renewals += 1 }
            previous = ttl
            return renewals >= 2
        }
        #expect(renewed, "the lease was not renewed in the background")
        #expect(try client.send(["EXISTS".redisBytes, sessionLock.redis.lockKey(id.rawValue)]).int == 1)
        #expect(throws: SessionBusyError.self) { _ = try sessionLock.acquire(id) }
        lease.release()
        #expect(lease.isReleased)
        #expect(try client.send(["EXISTS".redisBytes, sessionLock.redis.lockKey(id.rawValue)]).int == 0)
        let next = try sessionLock.acquire(id)
        lease.release()  // a second release of the old lease must not free the next holder's lock
        #expect(try client.send(["EXISTS".redisBytes, sessionLock.redis.lockKey(id.rawValue)]).int == 1)
        next.release()
    }
}
