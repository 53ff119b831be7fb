import Foundation
import SessionCore
@testable import SessionRedis
import SessionStoreConformance
import Synchronization
import Testing
import TestSupport
import SystemSupport

@Suite struct RedisClusterSlotTests {
    @Test func crc16AndSlotsMatchRedis() {
        // The check value of CRC16/XMODEM, and slots Redis's own CLUSTER KEYSLOT gives.
        #expect(RedisClusterSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(RedisClusterSlot.of(key: Array("foo".utf8)) == 12182)
        #expect(RedisClusterSlot.of(key: Array("somekey".utf8)) == 11058)
    }

    @Test func hashTagsFollowRedisRules() {
        func slot(_ key: String) -> Int { RedisClusterSlot.of(key: Array(key.utf8)) }
        #expect(slot("{user1000}.following") == slot("{user1000}.followers"))
        #expect(slot("{user1000}.following") == slot("user1000"))
        #expect(slot("foo{}{bar}") == RedisClusterSlot.of(key: Array("foo{}{bar}".utf8)))  // empty tag: whole key
        #expect(slot("foo{}{bar}") != slot("bar"))
        #expect(slot("foo{{bar}}zap") == slot("{bar"))  // the tag ends at the first '}'
        #expect(slot("foo{bar}{zap}") == slot("bar"))  // only the first tag counts
        #expect(slot("no-close{brace") == RedisClusterSlot.of(key: Array("no-close{brace".utf8)))
    }

    @Test func sessionKeysAndTheirRecordsShareASlot() throws {
        let store = RedisSessionStore(
            client: RedisClient(configuration: RedisConfiguration(), logger: quietLogger()),
            logger: quietLogger())
        let id = SessionID.generate()
        let slot = RedisClusterSlot.of(key: store.key(for: id))
        let request = try IdempotentRequest(key: "k", method: "POST", target: "/", body: [], scope: .session(id))
        #expect(RedisClusterSlot.of(key: store.idempotencyKey(request.storageKey)) == slot)
        #expect(RedisClusterSlot.of(key: store.key(for: SessionID.generate(slotTag: id.slotTag))) == slot)
        let anonymous = try IdempotentRequest(key: "k", method: "POST", target: "/", body: [], scope: .anonymous)
        let created = SessionID.generate(slotTag: anonymous.slotTag)
        #expect(
            RedisClusterSlot.of(key: store.key(for: created))
                == RedisClusterSlot.of(key: store.idempotencyKey(anonymous.storageKey)))
    }

    @Test func redirectsAreParsed() {
        #expect(RedisRedirect(errorMessage: "MOVED 3999 127.0.0.1:6381") == .moved(slot: 3999, to: .init(host: "127.0.0.1", port: 6381)))
        #expect(RedisRedirect(errorMessage: "EVALSHA session-apply: ASK 12 10.0.0.2:7000") == .ask(slot: 12, to: .init(host: "10.0.0.2", port: 7000)))
        #expect(RedisRedirect(errorMessage: "TRYAGAIN Multiple keys request during rehashing of slot") == .retryLater)
        #expect(RedisRedirect(errorMessage: "CLUSTERDOWN The cluster is down") == .retryLater)
        #expect(RedisRedirect(errorMessage: "MOVED 16384 127.0.0.1:1") == nil, "slot out of range")
        #expect(RedisRedirect(errorMessage: "MOVED x 127.0.0.1:1") == nil)
        #expect(RedisRedirect(errorMessage: "ERR wrong number of arguments") == nil)
    }

    @Test func slotMapsAreParsedAndMalformedOnesRefused() throws {
        let reply = RedisValue.array([
            .array([.integer(0), .integer(5460), .array([.bulk(Array("127.0.0.1".utf8)), .integer(7001), .bulk([])])]),
            .array([.integer(5461), .integer(16383), .array([.bulk([]), .integer(7002)]), .array([.bulk(Array("127.0.0.1".utf8)), .integer(7005)])]),
        ])
        let map = try RedisSlotMap(clusterSlots: reply, askedHost: "10.1.1.1")
        #expect(map.assignedSlots == 16384)
        #expect(map.primary(forSlot: 0) == RedisNodeAddress(host: "127.0.0.1", port: 7001))
        #expect(map.primary(forSlot: 16383) == RedisNodeAddress(host: "10.1.1.1", port: 7002), "an empty host is the one asked")
        #expect(map.primaries.count == 2, "replicas are never routed to")
        for bad: RedisValue in [
            .integer(1), .array([.array([.integer(5), .integer(2), .array([.bulk([]), .integer(1)])])]),
            .array([.array([.integer(0), .integer(16384), .array([.bulk([]), .integer(1)])])]),
            .array([.array([.integer(0), .integer(1), .array([.bulk([]), .integer(0)])])]),
        ] {
            #expect(throws: RedisError.self) { try RedisSlotMap(clusterSlots: bad, askedHost: "h") }
        }
    }

    @Test func clusterSeedsParse() throws {
        let plain = try RedisConfiguration(clusterSeeds: "127.0.0.1:7001, localhost:7002")
        #expect(plain.endpoint == .cluster(seeds: [.init(host: "127.0.0.1", port: 7001), .init(host: "127.0.0.1", port: 7002)]))
        let url = try RedisConfiguration(clusterSeeds: "redis://app:s%40cret@10.0.0.1:7001,10.0.0.2:7002")
        #expect(url.username == "app")
        #expect(url.password == "s@cret")
        #expect(url.endpoint == .cluster(seeds: [.init(host: "10.0.0.1", port: 7001), .init(host: "10.0.0.2", port: 7002)]))
        #expect(throws: RedisError.self) { try RedisConfiguration(clusterSeeds: "redis://10.0.0.1:7001/2") }
        #expect(throws: RedisError.self) { try RedisConfiguration(clusterSeeds: "") }
        #expect(throws: RedisError.self) { try RedisConfiguration(clusterSeeds: "h:0") }
    }

    @Test func anUnreachableClusterIsAClearUnavailableError() throws {
        let port = try Sockets.freeLoopbackPort()  // nothing listens there
        var configuration = try RedisConfiguration(clusterSeeds: "127.0.0.1:\(port)")
        configuration.commandTimeoutMillis = 300
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let store = RedisSessionStore(client: client, logger: quietLogger())
        let error = #expect(throws: SessionStoreError.self) { _ = try store.load(SessionID.generate()) }
        #expect(error?.code == .unavailable)
        #expect(client.healthProblem() != nil)
    }
}

@Suite(.tags(.integration)) struct RedisClusterStoreConformanceTests {
    @Test(.enabled(if: TestRedis.clusterAvailable, "needs REDIS_CLUSTER_SEEDS (scripts/test.sh starts a Redis Cluster)"),
          arguments: SessionStoreConformance.allCases)
    func redisClusterStoreConforms(_ check: SessionStoreConformance) throws {
        try check.run(RedisHarness(cluster: true))
    }
}

@Suite(.enabled(if: TestRedis.clusterAvailable, "needs REDIS_CLUSTER_SEEDS"), .serialized, .tags(.integration))
struct RedisClusterStoreTests {
    let expiry = SessionExpiry(idleTimeoutMillis: 120_000, absoluteTimeoutMillis: nil)

    func primaries() throws -> [ClusterNodeConnection] {
        let seed = try #require(TestRedis.clusterSeeds?.split(separator: ",").first)
        let (host, port) = try RedisConfiguration.hostAndPort(String(seed), defaultPort: 6379)
        return try ClusterNodeConnection(.init(host: host, port: port)).slotMap().primaries.map(ClusterNodeConnection.init)
    }

    @Test func thirtyThousandSessionsSpreadEvenlyOverThePrimaries() throws {
        let prefix = TestRedis.uniquePrefix()
        let store = RedisSessionStore(
            client: try TestRedis.client(poolSize: 8, cluster: true), expiry: expiry, keyPrefix: prefix, logger: quietLogger())
        let total = 30_000
        let failures = Mutex<[String]>([])
        let finished = onThreads(8, seconds: 120) { thread in
            for _ in stride(from: thread, to: total, by: 8) {
                do {
                    _ = try store.apply(SessionDelta(id: SessionID.generate(), changes: [.set("n", [0x31])], createIfMissing: true))
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        try #require(finished)
        #expect(failures.withLock { $0 }.isEmpty)
        var counts: [Int] = []
        for primary in try primaries() {
            var cursor = "0"
            var count = 0
            repeat {
                let reply = try primary.send("SCAN", cursor, "MATCH", "\(prefix)*", "COUNT", 2000)
                cursor = reply.array?.first?.string ?? "0"
                count += reply.array?.last?.array?.count ?? 0
            } while cursor != "0"
            counts.append(count)
        }
        #expect(counts.count == 3)
        #expect(counts.reduce(0, +) == total, "every session is on exactly one primary")
        for count in counts {
            #expect(abs(Double(count) - Double(total) / 3) <= Double(total) / 3 * 0.05, "per primary: \(counts)")
        }
    }

    @Test func aRecordInAnotherSlotIsRefusedClearly() throws {
        let store = RedisSessionStore(
            client: try TestRedis.client(cluster: true), expiry: expiry, keyPrefix: TestRedis.uniquePrefix(), logger: quietLogger())
        let id = SessionID.generate(slotTag: "AAA")
        let other = try IdempotentRequest(key: "k", method: "POST", target: "/", body: [], scope: .session(SessionID.generate(slotTag: "zzz")))
        var delta = SessionDelta(id: id, changes: [.set("a", [0x31])], createIfMissing: true)
        delta.idempotencyRecord = IdempotencyRecord(
            key: other.storageKey, fingerprint: other.fingerprint, response: StoredResponse(status: 200, headers: [], body: []),
            ttlMillis: 60_000)
        let error = #expect(throws: SessionStoreError.self) { _ = try store.apply(delta) }
        #expect(error?.code == .invalidValue)
        #expect(try store.load(id) == nil, "nothing written")
        #expect(throws: SessionStoreError.self) { _ = try store.regenerate(id, to: SessionID.generate(slotTag: "zzz")) }
    }

    @Test func theLockKeepsMutualExclusionAndIncreasingTokens() throws {
        try RedisLockTests.eightContendersNeverOverlap(client: try TestRedis.client(poolSize: 8, cluster: true))
    }

    /// 8 threads increment counters in sessions whose slots move (ASK, then
    /// MOVED) from one primary to another, 128 slots in all, and back.
    @Test func aLiveSlotMigrationLosesNoIncrementAndShowsNoError() throws {
        let nodes = try primaries()
        let map = try nodes[0].slotMap()
        let source = try #require(nodes.first { map.primaries.first == $0.address })
        let target = try #require(nodes.first { $0.address != source.address })
        let others = nodes.filter { $0.address != source.address && $0.address != target.address }
        let store = RedisSessionStore(
            client: try TestRedis.client(poolSize: 8, cluster: true), expiry: expiry, keyPrefix: TestRedis.uniquePrefix(),
            logger: quietLogger())
        // 32 sessions on the source, and 128 of its slots that include theirs.
        var sessions: [SessionID] = []
        while sessions.count < 32 {
            let id = SessionID.generate()
            if map.primary(forSlot: RedisClusterSlot.of(key: store.key(for: id))) == source.address { sessions.append(id) }
        }
        var slots = Set(sessions.map { RedisClusterSlot.of(key: store.key(for: $0)) })
        for slot in 0..<RedisClusterSlot.count where slots.count < 128 && map.primary(forSlot: slot) == source.address {
            slots.insert(slot)
        }
        let moving = slots.sorted()
        let writers = try IncrementWriters(threads: 8, store: store, sessions: sessions)
        // Writing before the migration starts, and on while it runs and after (counts, not times).
        let wroteBefore = waitUntil(timeout: 60) { writers.total > 100 }
        let beforeMigration = writers.total
        try migrate(slots: moving, from: source, to: target, others: others)
        let moved = try nodes[0].slotMap()
        #expect(moving.allSatisfy { moved.primary(forSlot: $0) == target.address })
        try migrate(slots: moving, from: target, to: source, others: others)
        let afterMigration = writers.total
        let wroteAfter = waitUntil(timeout: 60) { writers.total > afterMigration + 100 }
        try #require(writers.stop())
        #expect(wroteBefore && wroteAfter, "the writers wrote before and after the migration")
        #expect(afterMigration > beforeMigration, "the writers wrote during the migration")
        #expect(writers.failures == [])
        // Nor applied twice: every counter holds exactly its acknowledged increments.
        let counts = writers.acknowledged
        for id in sessions {
            let value = try store.load(id)?.attributes["n"].map { Int64(String(decoding: $0, as: UTF8.self)) ?? -1 }
            #expect(value == counts[id, default: 0], "increments of \(id)")
        }
    }
}
