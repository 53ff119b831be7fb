import Foundation
import SessionCore
import SessionRedis
import Synchronization
import Testing
import TestSupport

@Suite(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"), .tags(.integration))
struct RedisSessionStoreTests {
    func store(prefix: String, maxSessionBytes: Int = 64 * 1024) throws -> RedisSessionStore {
        RedisSessionStore(
            client: try TestRedis.client(), keyPrefix: prefix, maxSessionBytes: maxSessionBytes,
            logger: quietLogger())
    }

    @Test func twoStoresTimesEightThreadsNeverLoseAnIncrement() throws {
        let prefix = TestRedis.uniquePrefix()
        let stores = [try store(prefix: prefix), try store(prefix: prefix)]  // two nodes, one Redis
        let id = SessionID.generate()
        _ = try stores[0].apply(SessionDelta(id: id, changes: [], createIfMissing: true))
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 16) { worker in
            let store = stores[worker % 2]
            for _ in 0..<500 {
                if (try? store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)]))) == nil {
                    failures.withLock { $0 += 1 }
                }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(try stores[1].load(id)?.attributes["n"] == Array("8000".utf8))
    }

    @Test func aClaimWhoseConnectionClosedIsTakenOverAtOnceAndTheLateRunIsRefused() throws {
        let prefix = TestRedis.uniquePrefix()
        let dying = try store(prefix: prefix)  // a node that claims a key, then dies
        let survivor = try store(prefix: prefix)
        let key = "k-\(SessionID.generate().rawValue)"
        let id = SessionID.generate()
        _ = try survivor.apply(SessionDelta(id: id, changes: [], createIfMissing: true))
        #expect(try dying.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000) == .claimed)
        // While the claiming connection is open, the claim holds.
        #expect(try survivor.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000) == .inProgress)
        // The owner is the process's presence connection, not a pooled one (those come and go): a
        // pooled connection of the claiming node that closes leaves the claim held.
        let pooled = try dying.client.withConnection { try $0.clientID() }
        #expect(pooled != (try dying.client.presenceID()))
        try survivor.client.send("CLIENT", "KILL", "ID", pooled)
        #expect(try survivor.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000) == .inProgress)
        dying.client.close()  // its connections close, as the kernel closes a killed node's sockets
        // Redis drops the closed connection within its next event loop turns; 30 s is half the
        // claim's 60 s lease, so a takeover within it is not the lease running out.
        let claimed = waitUntil(timeout: 30) {
            (try? survivor.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000)) == .claimed
        }
        #expect(claimed, "the claim of a closed connection is taken over long before its 60 s lease")
        #expect(try survivor.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000) == .inProgress)
        // The first run, should it live on and fail, cannot drop the claim it lost.
        try dying.abandon(key: key)
        #expect(try survivor.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000) == .inProgress)
        // The retry completes; should the first run still commit, nothing of it is written.
        let response = StoredResponse(status: 201, headers: [], body: Array("{\"n\":1}".utf8))
        var retry = SessionDelta(id: id, changes: [.increment("n", by: 1)])
        retry.idempotencyRecord = IdempotencyRecord(key: key, fingerprint: "fp", response: response, ttlMillis: 60_000)
        #expect(try survivor.apply(retry)?.counters == ["n": 1])
        var late = retry
        late.idempotencyRecord?.response.status = 200
        let refused = #expect(throws: SessionStoreError.self) { _ = try dying.apply(late) }
        #expect(refused?.code == .idempotencyKeyCompleted)
        #expect(try survivor.load(id)?.attributes["n"] == Array("1".utf8))
        #expect(try dying.begin(key: key, fingerprint: "fp", inProgressMillis: 60_000) == .completed(response))
    }

    @Test func aSessionIsOneReadableHash() throws {
        let prefix = TestRedis.uniquePrefix()
        let store = try store(prefix: prefix)
        let id = SessionID.generate()
        _ = try store.apply(SessionDelta(id: id, changes: [.set("user", Array("\"ada\"".utf8))], createIfMissing: true))
        let fields = try #require(try store.client.send(["HGETALL".redisBytes, store.key(for: id)]).array)
        var map: [String: String] = [:]
        for i in stride(from: 0, to: fields.count, by: 2) { map[fields[i].string!] = fields[i + 1].string! }
        #expect(map["attr:user"] == "\"ada\"")
        #expect(map["meta:version"] == "1")
        #expect(map["meta:created"] != nil && map["meta:access"] != nil)
        #expect(String(decoding: store.key(for: id), as: UTF8.self) == "\(prefix){\(id.slotTag)}:\(id.rawValue)")
        let ttl = try #require(try store.client.send(["PTTL".redisBytes, store.key(for: id)]).int)
        #expect(ttl > 0 && ttl <= store.expiry.idleTimeoutMillis, "TTL = min(idle, absolute remaining)")
    }

    /// The key's TTL is min(idle timeout, absolute remaining), after a write and after a touching
    /// read. The bounds below leave 30 s for the few commands between a write and its PTTL.
    @Test func theKeysTTLIsTheIdleTimeoutOrTheAbsoluteRemainderWhicheverIsShorter() throws {
        let client = try TestRedis.client()
        func store(idle: Int64, absolute: Int64?) -> RedisSessionStore {
            RedisSessionStore(
                client: client, expiry: SessionExpiry(idleTimeoutMillis: idle, absoluteTimeoutMillis: absolute),
                keyPrefix: TestRedis.uniquePrefix(), logger: quietLogger())
        }
        func pttl(_ store: RedisSessionStore, _ id: SessionID) throws -> Int64 {
            try #require(try client.send(["PTTL".redisBytes, store.key(for: id)]).int)
        }
        func redisNowMillis() throws -> Int64 {
            let time = try #require(try client.send("TIME").array)
            let seconds = try #require(time.first?.int)
            let micros = try #require(time.last?.int)
            return seconds * 1000 + micros / 1000
        }

        // Idle shorter than absolute: the idle timeout.
        let idleFirst = store(idle: 60_000, absolute: 3_600_000)
        let a = SessionID.generate()
        _ = try idleFirst.apply(SessionDelta(id: a, changes: [.set("x", Array("1".utf8))], createIfMissing: true))
        var ttl = try pttl(idleFirst, a)
        #expect(ttl > 30_000 && ttl <= 60_000, "idle 60 s, absolute 1 h: \(ttl) ms")

        // Absolute shorter than idle: the absolute timeout.
        let absoluteFirst = store(idle: 3_600_000, absolute: 60_000)
        let b = SessionID.generate()
        _ = try absoluteFirst.apply(SessionDelta(id: b, changes: [.set("x", Array("1".utf8))], createIfMissing: true))
        ttl = try pttl(absoluteFirst, b)
        #expect(ttl > 30_000 && ttl <= 60_000, "idle 1 h, absolute 60 s: \(ttl) ms")

        // A session 59 minutes old (created so on Redis's clock), idle 10 min, absolute 1 h: a write
        // sets what is left of the hour, 1 min.
        let aging = store(idle: 600_000, absolute: 3_600_000)
        let c = SessionID.generate()
        _ = try aging.apply(SessionDelta(id: c, changes: [.set("x", Array("1".utf8))], createIfMissing: true))
        ttl = try pttl(aging, c)
        #expect(ttl > 300_000 && ttl <= 600_000, "a new session: the idle timeout (\(ttl) ms)")
        try client.send(["HSET".redisBytes, aging.key(for: c), "meta:created".redisBytes, (try redisNowMillis() - 3_540_000).redisBytes])
        _ = try #require(try aging.apply(SessionDelta(id: c, changes: [.set("x", Array("2".utf8))])))
        ttl = try pttl(aging, c)
        #expect(ttl > 30_000 && ttl <= 60_000, "59 min old: the minute left of the absolute timeout (\(ttl) ms)")

        // ...and so does a read that touches it (its last access 2 min ago: a touch is due after idle/10).
        try client.send(["PEXPIRE".redisBytes, aging.key(for: c), "600000".redisBytes])
        try client.send(["HSET".redisBytes, aging.key(for: c), "meta:access".redisBytes, (try redisNowMillis() - 120_000).redisBytes])
        let touched = try #require(try aging.load(c))
        #expect(touched.attributes["x"] == Array("2".utf8))
        ttl = try pttl(aging, c)
        #expect(ttl > 30_000 && ttl <= 60_000, "touched at 59 min: the minute left (\(ttl) ms)")
    }

    @Test func corruptOrForeignFieldsAreDroppedAndTheSessionSurvives() throws {
        let store = try store(prefix: TestRedis.uniquePrefix())
        let id = SessionID.generate()
        _ = try store.apply(SessionDelta(id: id, changes: [.set("good", Array("{\"a\":1}".utf8))], createIfMissing: true))
        let key = store.key(for: id)
        try store.client.send(["HSET".redisBytes, key, "attr:bad".redisBytes, Array("{not json".utf8)])
        try store.client.send(["HSET".redisBytes, key, "somebody-elses-field".redisBytes, "x".redisBytes])
        let loaded = try #require(try store.load(id))
        #expect(loaded.attributes == ["good": Array("{\"a\":1}".utf8)])
        // The session still takes writes.
        #expect(try store.apply(SessionDelta(id: id, changes: [.set("more", Array("2".utf8))])) != nil)
    }

    @Test func anOversizedSessionIsRefusedAndNothingIsWritten() throws {
        let store = try store(prefix: TestRedis.uniquePrefix(), maxSessionBytes: 200)
        let id = SessionID.generate()
        _ = try store.apply(SessionDelta(id: id, changes: [.set("a", Array("1".utf8))], createIfMissing: true))
        let before = try #require(try store.load(id))
        let error = #expect(throws: SessionStoreError.self) {
            _ = try store.apply(SessionDelta(id: id, changes: [
                .set("b", Array("2".utf8)), .set("big", Array(("\"" + String(repeating: "x", count: 300) + "\"").utf8)),
            ]))
        }
        #expect(error?.code == .sessionTooLarge)
        let after = try #require(try store.load(id))
        #expect(after.attributes == before.attributes)
        #expect(after.version == before.version)
    }

    @Test func redisRestartedMidTestFailsClearlyThenRecovers() throws {
        let server = try RedisServerProcess()
        var configuration = try RedisConfiguration(url: server.url)
        configuration.connectTimeoutMillis = 200
        configuration.commandTimeoutMillis = 200
        configuration.reconnectBackoffMillis = 20
        configuration.maxReconnectBackoffMillis = 100
        let store = RedisSessionStore(
            client: RedisClient(configuration: configuration, logger: quietLogger()), logger: quietLogger())
        let id = SessionID.generate()
        _ = try store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)], createIfMissing: true))

        server.kill()
        let start = Date()
        let error = #expect(throws: SessionStoreError.self) { _ = try store.load(id) }
        #expect(error?.code == .unavailable)
        // The connect and command timeouts are 200 ms each: a call that hangs beyond them fails
        // this bound, which is ten times their sum (a loaded machine does not make it flaky).
        #expect(Date().timeIntervalSince(start) < 4, "no hang beyond the timeouts")
        #expect(throws: SessionStoreError.self) { _ = try store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)])) }

        try server.start()  // same port, empty (no persistence)
        var recovered = false
        let deadline = Date().addingTimeInterval(10)  // 100 times the longest reconnect backoff
        while !recovered && Date() < deadline {
            recovered = (try? store.apply(SessionDelta(id: .generate(), changes: [], createIfMissing: true))) != nil
            if !recovered { usleep(20_000) }
        }
        #expect(recovered, "the store works again once Redis is back")
        server.kill()
    }
}
