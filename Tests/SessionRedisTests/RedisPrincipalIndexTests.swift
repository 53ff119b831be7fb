import Foundation
import Synchronization
import SessionCore
import SessionRedis
import Testing
import TestSupport

/// The principal index leaves nothing behind in Redis: every index key expires with its
/// longest-lived session, and touches and writes carry the index's expiry along.
@Suite(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"), .tags(.integration))
struct RedisPrincipalIndexTests {
    let expiry = SessionExpiry(idleTimeoutMillis: 1_000, absoluteTimeoutMillis: nil)

    func store(prefix: String, client: RedisClient) -> RedisSessionStore {
        RedisSessionStore(client: client, expiry: expiry, keyPrefix: prefix, nodeName: "node-a", logger: quietLogger())
    }

    /// The keys under `prefix` (a test may scan; the store never does).
    func keys(_ client: RedisClient, prefix: String) throws -> [String] {
        try client.send(["KEYS".redisBytes, "\(prefix)*".redisBytes]).array?.compactMap(\.string) ?? []
    }

    @Test func whenEverySessionHasExpiredNoKeyIsLeft() throws {
        let client = try TestRedis.client()
        let prefix = TestRedis.uniquePrefix()
        let store = store(prefix: prefix, client: client)
        for user in 0..<10 {
            for _ in 0..<10 {
                let principal = "user-\(user)"
                _ = try store.changePrincipal(
                    PrincipalChange(id: nil, newID: SessionID.generate(slotTag: SessionPrincipal.slotTag(of: principal)), principal: principal))
            }
        }
        #expect(try store.sessions(ofPrincipal: "user-3").count == 10)
        let indexes = try keys(client, prefix: prefix).filter { $0.hasSuffix(":principals") }
        #expect(indexes.count == Set((0..<10).map { SessionPrincipal.slotTag(of: "user-\($0)") }).count)
        for index in indexes {
            let ttl = try #require(try client.send(["PTTL".redisBytes, index.redisBytes]).int)
            #expect(ttl > 0 && ttl <= expiry.idleTimeoutMillis, "index \(index): PTTL \(ttl)")
        }
        usleep(UInt32(expiry.idleTimeoutMillis + 300) * 1000)
        #expect(try keys(client, prefix: prefix) == [])
    }

    @Test func writesAndTouchesCarryTheIndexAlong() throws {
        let client = try TestRedis.client()
        let prefix = TestRedis.uniquePrefix()
        let store = store(prefix: prefix, client: client)
        let id = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: "ada"))
        _ = try store.changePrincipal(PrincipalChange(id: nil, newID: id, principal: "ada", client: "test"))
        // Only written, every 300 ms, for 1.5 idle timeouts; then only read for as long.
        for _ in 0..<5 {
            usleep(300_000)
            _ = try store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)]))
        }
        #expect(try store.sessions(ofPrincipal: "ada").map(\.id) == [id], "writes must keep the index entry alive")
        for _ in 0..<5 {
            usleep(300_000)
            _ = try store.load(id)
        }
        let listed = try store.sessions(ofPrincipal: "ada")
        #expect(listed.map(\.id) == [id])
        #expect(listed.first?.node == "node-a")
        #expect(listed.first?.client == "test")
        let index = store.principalIndexKey(slotTag: id.slotTag)
        let indexTTL = try #require(try client.send(["PTTL".redisBytes, index]).int)
        let sessionTTL = try #require(try client.send(["PTTL".redisBytes, store.key(for: id)]).int)
        #expect(indexTTL >= sessionTTL - 5 && indexTTL <= sessionTTL + 5, "index \(indexTTL) ms, session \(sessionTTL) ms")
    }

    @Test func logoutLeavesTheIndexKeyNoLongerThanNeeded() throws {
        let client = try TestRedis.client()
        let prefix = TestRedis.uniquePrefix()
        let store = store(prefix: prefix, client: client)
        let id = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: "grace"))
        _ = try store.changePrincipal(PrincipalChange(id: nil, newID: id, principal: "grace"))
        try store.invalidate(id)
        #expect(try store.sessions(ofPrincipal: "grace").isEmpty)
        #expect(try client.send(["EXISTS".redisBytes, store.principalIndexKey(slotTag: id.slotTag)]).int == 0)
    }
}

/// Expiry events on Redis: three nodes' stores on one Redis (or one Redis Cluster), each with a
/// sweeper; every logged-in session's expiry is reported once, by one of them.
@Suite(.tags(.integration))
struct RedisExpiryEventTests {
    final class Heard: SessionEventListener {
        let events = Mutex<[SessionEvent]>([])
        func sessionEvent(_ event: SessionEvent) { events.withLock { $0.append(event) } }
        var expired: [SessionEvent] { events.withLock { $0.filter { $0.kind == .expired } } }
    }

    @Test(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"))
    func aThousandSessionsOfTenUsersExpireAndEachIsReportedOnceAcrossThreeNodes() throws {
        try expireAThousand(cluster: false)
    }

    @Test(.enabled(if: TestRedis.clusterAvailable, "needs REDIS_CLUSTER_SEEDS (scripts/test.sh starts a Redis Cluster)"))
    func onARedisClusterTooEachExpiryIsReportedOnce() throws {
        try expireAThousand(cluster: true)
    }

    /// The keys under `prefix`, on every primary (KEYS: a test may; the store never does).
    func keys(_ prefix: String, cluster: Bool) throws -> [String] {
        guard cluster else {
            return try TestRedis.client().send(["KEYS".redisBytes, "\(prefix)*".redisBytes]).array?.compactMap(\.string) ?? []
        }
        return try RedisClusterStoreTests().primaries().flatMap { primary in
            try primary.send(["KEYS".redisBytes, "\(prefix)*".redisBytes]).array?.compactMap(\.string) ?? []
        }
    }

    func expireAThousand(cluster: Bool) throws {
        let prefix = TestRedis.uniquePrefix()
        let expiry = SessionExpiry(idleTimeoutMillis: 1_500, absoluteTimeoutMillis: nil)
        let heard = (0..<3).map { _ in Heard() }
        let stores = try (0..<3).map { i in
            let store = RedisSessionStore(
                client: try TestRedis.client(cluster: cluster), expiry: expiry, keyPrefix: prefix, nodeName: "node-\(i)",
                logger: quietLogger())
            store.events.current = heard[i]
            return store
        }
        for i in 0..<1_000 {
            let user = "user-\(i % 10)"
            _ = try stores[i % 3].changePrincipal(
                PrincipalChange(id: nil, newID: SessionID.generate(slotTag: SessionPrincipal.slotTag(of: user)), principal: user))
        }
        for store in stores { store.startExpirySweeper(intervalMillis: 200) }
        defer { for store in stores { store.stopExpirySweeper() } }
        let total = { heard.reduce(0) { $0 + $1.expired.count } }
        let allReported = waitUntil(timeout: 10) { total() >= 1_000 }
        usleep(600_000)  // two more sweeps of every node: a duplicate would show now
        #expect(allReported && total() == 1_000, "\(total()) expired events")
        let handles = heard.flatMap { $0.expired.map(\.handle) }
        #expect(Set(handles).count == 1_000, "each session once")
        #expect(heard.allSatisfy { !$0.expired.isEmpty }, "the nodes share the work: \(heard.map { $0.expired.count })")
        for user in 0..<10 { #expect(try stores[0].sessions(ofPrincipal: "user-\(user)").isEmpty) }
        // The index keys and the schedule expire too (the schedule two sweep intervals after its last entry).
        let empty = waitUntil(timeout: 5) { (try? keys(prefix, cluster: cluster))?.isEmpty ?? false }
        #expect(empty, "keys left: \(String(describing: try? keys(prefix, cluster: cluster)))")
    }
}
