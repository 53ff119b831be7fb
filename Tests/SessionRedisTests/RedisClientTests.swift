import Foundation
import Logging
import SessionCore
import SessionRedis
import Synchronization
import Testing
import TestSupport
import SystemSupport

@Suite struct RedisURLTests {
    @Test func parsesEveryPart() throws {
        let c = try RedisConfiguration(url: "redis://user:p%40ss@10.1.2.3:6380/4")
        #expect(c.endpoint == .direct(host: "10.1.2.3", port: 6380))
        #expect(c.username == "user")
        #expect(c.password == "p@ss")
        #expect(c.database == 4)
        let d = try RedisConfiguration(url: "redis://:secret@localhost")
        #expect(d.endpoint == .direct(host: "127.0.0.1", port: 6379))
        #expect(d.username == nil)
        #expect(d.password == "secret")
        #expect(d.database == 0)
        #expect(try RedisConfiguration(url: "redis://[::1]:7000/").endpoint == .direct(host: "::1", port: 7000))
    }

    @Test(arguments: ["http://x", "redis://", "redis://h:0", "redis://h:99999", "redis://h:port", "redis://h/x", "redis://:%zz@h"])
    func rejectsBadURLs(_ url: String) {
        #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
    }

    @Test func parsesSentinelLists() throws {
        let list = try RedisConfiguration.sentinels("127.0.0.1:26379, 127.0.0.2")
        #expect(list == [.init(host: "127.0.0.1", port: 26379), .init(host: "127.0.0.2", port: 26379)])
        #expect(throws: RedisError.self) { try RedisConfiguration.sentinels("") }
    }
}

@Suite(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"), .tags(.integration))
struct RedisClientTests {
    @Test func commandsAreBinarySafe() throws {
        let client = try TestRedis.client()
        let key = TestRedis.uniquePrefix() + "bin"
        let value: [UInt8] = Array(0...255) + [13, 10, 0]
        try client.send("SET", key, value, "PX", 10_000)
        #expect(try client.send("GET", key).bytes == value)
        #expect(try client.send("GET", key + ":missing") == .null)
        try client.send("DEL", key)
    }

    @Test func pipelinesKeepOrderAndReportErrorsInPlace() throws {
        let client = try TestRedis.client()
        let key = TestRedis.uniquePrefix() + "p"
        let replies = try client.pipeline([
            ["SET".redisBytes, key.redisBytes, "5".redisBytes],
            ["INCRBY".redisBytes, key.redisBytes, "2".redisBytes],
            ["HGET".redisBytes, key.redisBytes, "x".redisBytes],
            ["GET".redisBytes, key.redisBytes],
            ["DEL".redisBytes, key.redisBytes],
        ])
        #expect(replies.count == 5)
        #expect(replies[0] == .status("OK"))
        #expect(replies[1] == .integer(7))
        #expect(replies[2].isError)
        #expect(replies[3].string == "7")
        #expect(replies[4] == .integer(1))
    }

    @Test func serverErrorsCarryRedisOwnMessage() throws {
        let client = try TestRedis.client()
        let error = #expect(throws: RedisError.self) { try client.send("NOSUCHCOMMAND", "x") }
        #expect(error?.code == .server)
        #expect(error?.message.contains("unknown command") == true)
    }

    @Test func scriptsAreLoadedWhenRedisDoesNotKnowThem() throws {
        let client = try TestRedis.client(poolSize: 1)
        let script = RedisScript(name: "test-add", source: "return tonumber(ARGV[1]) + \(Int.random(in: 1...1_000_000)) - 0")
        let first = try client.eval(script, keys: [], args: ["1".redisBytes])
        try client.send("SCRIPT", "FLUSH")  // forget it: the next EVALSHA gets NOSCRIPT
        let second = try client.eval(script, keys: [], args: ["1".redisBytes])
        #expect(first == second)
        #expect(try client.send("SCRIPT", "EXISTS", script.sha1).array == [.integer(1)])
        let bad = RedisScript(name: "bad", source: "return redis.call('NOPE')")
        let error = #expect(throws: RedisError.self) { try client.eval(bad, keys: [], args: []) }
        #expect(error?.code == .server)
    }

    @Test func aSlowReplyTimesOutAndTheConnectionIsReplaced() throws {
        var configuration = try TestRedis.configuration(poolSize: 1, commandTimeoutMillis: 200)
        configuration.reconnectBackoffMillis = 10
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let start = Date()
        let error = #expect(throws: RedisError.self) {
            try client.send("BLPOP", TestRedis.uniquePrefix() + "empty", 2)  // blocks for 2 s server-side
        }
        #expect(error?.code == .timeout)
        #expect(Date().timeIntervalSince(start) < 1.0, "the command timeout bounds the wait")
        #expect(try client.send("PING") == .status("PONG"), "a fresh connection replaced the timed-out one")
    }

    @Test func anUnreachableRedisFailsFastWithBackoffThenRecovers() throws {
        let port = try Sockets.freeLoopbackPort()
        var configuration = try RedisConfiguration(url: "redis://127.0.0.1:\(port)/0")
        configuration.connectTimeoutMillis = 200
        configuration.commandTimeoutMillis = 200
        configuration.reconnectBackoffMillis = 100
        configuration.maxReconnectBackoffMillis = 200
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let first = #expect(throws: RedisError.self) { try client.send("PING") }
        #expect(first?.code == .connection)
        // Within the backoff, callers fail at once instead of reconnecting.
        let start = Date()
        let second = #expect(throws: RedisError.self) { try client.send("PING") }
        #expect(second?.message.contains("next attempt") == true)
        #expect(Date().timeIntervalSince(start) < 0.05)
        #expect(client.healthProblem() != nil)
        // Redis appears: the client finds it by itself.
        let server = try RedisServerProcess(port: port)
        #expect(waitUntil(timeout: 3) { client.ping() })
        server.kill()
    }

    @Test func authAndDatabaseSelectionFromTheURL() throws {
        let server = try RedisServerProcess()
        let admin = RedisClient(configuration: try RedisConfiguration(url: server.url), logger: quietLogger())
        try admin.send("CONFIG", "SET", "requirepass", "s3cret")
        let wrong = RedisClient(
            configuration: try RedisConfiguration(url: "redis://:nope@127.0.0.1:\(server.port)/0"), logger: quietLogger())
        #expect(throws: RedisError.self) { try wrong.send("PING") }
        let right = RedisClient(
            configuration: try RedisConfiguration(url: "redis://:s3cret@127.0.0.1:\(server.port)/3"), logger: quietLogger())
        try right.send("SET", "k", "in-db-3")
        let db0 = RedisClient(
            configuration: try RedisConfiguration(url: "redis://:s3cret@127.0.0.1:\(server.port)/0"), logger: quietLogger())
        #expect(try db0.send("GET", "k") == .null)
        #expect(try right.send("GET", "k").string == "in-db-3")
        server.kill()
    }
}

extension RedisValue {
    var isError: Bool {
        if case .error = self { return true }
        return false
    }
}
