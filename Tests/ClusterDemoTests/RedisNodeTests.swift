import ClusterDemo
import Foundation
import Logging
import SessionCore
import SessionRedis
import Testing
import TestSupport
import SystemSupport

/// Nodes with the Redis strategy, on a private redis-server each test starts and stops.
@Suite(.serialized, .enabled(if: RedisServerProcess.isInstalled, "needs redis-server (scripts/test.sh installs it)"), .tags(.integration))
struct RedisNodeTests {
    static func node(_ id: String, redisPort: Int) throws -> DemoNode {
        var redis = try RedisConfiguration(url: "redis://127.0.0.1:\(redisPort)/0")
        redis.connectTimeoutMillis = 200
        redis.commandTimeoutMillis = 300
        redis.reconnectBackoffMillis = 20
        redis.maxReconnectBackoffMillis = 100
        let node = try DemoNode(
            configuration: DemoNodeConfiguration(nodeID: id, port: 0, strategy: .redis, handlerThreads: 8, redis: redis),
            logger: quietLogger())
        try node.start()
        return node
    }

    /// Runs `body` with nodes "a" and "b" on a private redis-server of their own; stops all three afterwards.
    static func withTwoNodes(_ body: (DemoNode, DemoNode) throws -> Void) throws {
        let redis = try RedisServerProcess()
        defer { redis.kill() }
        let a = try node("a", redisPort: redis.port)
        defer { a.shutdown() }
        let b = try node("b", redisPort: redis.port)
        defer { b.shutdown() }
        try body(a, b)
    }

    @Test func anyNodeServesAnySession() throws {
        try Self.withTwoNodes { a, b in
            let client = CurlClient()
            let nodes = [a, b]
            for i in 1...6 {
                let node = nodes[i % 2]
                let r = try client.request("POST", "http://127.0.0.1:\(node.port)/api/counter")
                #expect(r.body == "{\"node\":\"\(i % 2 == 0 ? "a" : "b")\",\"count\":\(i)}")
            }
            _ = try client.request("POST", "http://127.0.0.1:\(a.port)/api/login", body: "{\"user\":\"grace\"}")
            let seen = try client.request("GET", "http://127.0.0.1:\(b.port)/api/session")
            #expect(seen.body == "{\"node\":\"b\",\"count\":6,\"user\":\"grace\"}")
            #expect(try client.request("GET", "http://127.0.0.1:\(a.port)/healthz").status == 200)
        }
    }

    @Test func aPOSTRetriedOnAnotherNodeIsNotAppliedTwice() throws {
        try Self.withTwoNodes { a, b in
            let client = CurlClient()
            _ = try client.request("POST", "http://127.0.0.1:\(a.port)/api/counter")
            // The balancer sent this POST to a, lost the answer, and retries it on b.
            let first = try client.request(
                "POST", "http://127.0.0.1:\(a.port)/api/counter", headers: ["Idempotency-Key: order-7"])
            let retry = try client.request(
                "POST", "http://127.0.0.1:\(b.port)/api/counter", headers: ["Idempotency-Key: order-7"])
            #expect(first.body == "{\"node\":\"a\",\"count\":2}")
            #expect(retry.body == first.body, "the retry is answered with the first response")
            #expect(retry.header("Idempotent-Replayed") == ["true"])
            #expect(retry.header("X-Served-By") == ["b"])
            #expect(try client.request("GET", "http://127.0.0.1:\(b.port)/api/session").body.contains("\"count\":2"))
        }
    }

    @Test func aNodeStartsWithoutRedisAndRecoversWhenItComes() throws {
        let port = try Sockets.freeLoopbackPort()
        let node = try Self.node("lonely", redisPort: port)
        defer { node.shutdown() }
        let base = "http://127.0.0.1:\(node.port)"
        let client = CurlClient()
        let health = try client.request("GET", "\(base)/healthz")
        #expect(health.status == 503)
        #expect(health.body.contains("\"status\":\"unavailable\""))
        let counter = try client.request("POST", "\(base)/api/counter")
        #expect(counter.status == 503)
        #expect(counter.body.contains("\"error\":\"session_store_unavailable\""))
        #expect(try client.request("GET", "\(base)/api/session").status == 200, "a request without a session needs no store")

        let redis = try RedisServerProcess(port: port)
        defer { redis.kill() }
        #expect(waitUntil(timeout: 5) { (try? client.request("GET", "\(base)/healthz").status) == 200 })
        #expect(try client.request("POST", "\(base)/api/counter").body.contains("\"count\":1"))
    }

    @Test func redisKilledMidTrafficGivesQuick503sThenRecovers() throws {
        let redis = try RedisServerProcess()
        defer { redis.kill() }
        let node = try Self.node("n", redisPort: redis.port)
        defer { node.shutdown() }
        let base = "http://127.0.0.1:\(node.port)"
        let client = CurlClient()
        #expect(try client.request("POST", "\(base)/api/counter").status == 200)
        redis.kill()
        // Bounded by the Redis timeouts (200 ms connect, 300 ms command): the client gives up
        // after 5 s (10x), so an answer at all, a 503, is the node not waiting on a dead store.
        let down = try client.request("POST", "\(base)/api/counter")
        #expect(down.status == 503)
        try redis.start()
        #expect(waitUntil(timeout: 5) { (try? client.request("POST", "\(base)/api/counter").status) == 200 })
    }
}
