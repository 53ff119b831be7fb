import Dispatch
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
        // BLPOP blocks for 60 s server-side: only the 200 ms command timeout ends the call with
        // .timeout (without it, BLPOP would answer nil after a minute).
        let error = #expect(throws: RedisError.self) {
            try client.send("BLPOP", TestRedis.uniquePrefix() + "empty", 60)
        }
        #expect(error?.code == .timeout)
        #expect(try client.send("PING") == .status("PONG"), "a fresh connection replaced the timed-out one")
    }

    @Test func anUnreachableRedisFailsThenIsFoundAgain() throws {
        let port = try Sockets.freeLoopbackPort()
        let configuration = try redisConfiguration(
            "redis://127.0.0.1:\(port)/0", timeoutMillis: 200, backoffMillis: 100, maxBackoffMillis: 200)
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let first = #expect(throws: RedisError.self) { try client.send("PING") }
        #expect(first?.code == .connection)
        let second = #expect(throws: RedisError.self) { try client.send("PING") }
        #expect(second?.code == .connection)
        #expect(client.healthProblem() != nil)
        // Redis appears: the client finds it by itself once its backoff (at most 200 ms) has passed;
        // 10 s is 50 times that.
        let server = try RedisServerProcess(port: port)
        #expect(waitUntil(timeout: 10) { client.ping() })
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

/// A TCP listener on loopback that accepts connections and closes each at once, counting them:
/// a "Redis" whose every connection fails during the handshake (the client's SELECT finds the
/// connection closed).
private final class ClosingListener: Sendable {
    let port: Int
    private let fd: Int32
    private let accepted = Counter()
    private let done = DispatchSemaphore(value: 0)

    init() throws {
        var bound: (fd: Int32, port: Int)?
        for _ in 0..<3 where bound == nil {
            let port = try Sockets.freeLoopbackPort()
            if let fd = try? Sockets.listen(host: "127.0.0.1", port: port) { bound = (fd, port) }
        }
        guard let bound else { throw TestError("no free loopback port to listen on") }
        fd = bound.fd
        port = bound.port
        let (listening, accepted, done) = (bound.fd, accepted, done)
        Thread.detachNewThread {
            while true {
                let connection = Sockets.accept(listening)
                if connection < 0 {
                    if errno == EINTR { continue }
                    break
                }
                accepted.increment()
                close(connection)
            }
            done.signal()
        }
    }

    /// Connections accepted so far.
    var count: Int { accepted.current }

    /// Stops accepting (wakes the accept) and closes the socket.
    func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        _ = done.wait(timeout: .now() + 10)
        close(fd)
    }
}

/// Reconnect backoff and pool waits, against sockets and a redis-server of the test's own.
@Suite(.enabled(if: RedisServerProcess.isInstalled, "needs redis-server"), .serialized, .tags(.integration))
struct RedisClientBackoffAndPoolTests {
    @Test func withinTheReconnectBackoffCallersFailWithoutReconnecting() throws {
        let listener = try ClosingListener()
        defer { listener.stop() }
        // Database 1: every new connection sends SELECT, which finds the connection closed.
        // A backoff far longer than the test: every call after the first failed connect is within it.
        let configuration = try redisConfiguration(
            "redis://127.0.0.1:\(listener.port)/1", timeoutMillis: 2_000, backoffMillis: 600_000,
            maxBackoffMillis: 600_000)
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let first = #expect(throws: RedisError.self) { try client.send("PING") }
        #expect(first?.code == .connection)
        let attempts = listener.count
        #expect(attempts >= 1, "the first call connected")
        for _ in 0..<50 {
            let error = #expect(throws: RedisError.self) { try client.send("PING") }
            #expect(error?.code == .connection)
        }
        let failed = #expect(throws: RedisError.self) { try client.withConnection { try $0.command(["PING".redisBytes]) } }
        #expect(failed?.code == .connection)
        #expect(listener.count == attempts, "no new connection within the backoff: the server is not hammered")
    }

    @Test func aCallerWaitsForABusyPoolThenGetsTheReleasedConnection() throws {
        let server = try RedisServerProcess()
        defer { server.kill() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.poolSize = 1  // no shared connections: every command needs the one connection
        configuration.commandTimeoutMillis = 30_000
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        #expect(try client.send("PING") == .status("PONG"))

        let (release, holder) = try holdTheOnlyConnection(client)
        let answer = Mutex<Result<RedisValue, any Error>?>(nil)
        let waiter = startThreads(1) { _ in
            let result = Result { try client.send("PING") }
            answer.withLock { $0 = result }
        }
        // While the only connection is held, the caller waits (it neither fails nor opens another).
        #expect(waiter.wait(timeout: .now() + 1) == .timedOut, "the caller did not wait for the busy pool")
        #expect(answer.withLock { $0 == nil })
        release.signal()
        try #require(waiter.wait(timeout: .now() + 30) == .success, "the caller got no connection after the release")
        #expect(try answer.withLock { $0 }?.get() == .status("PONG"))
        try #require(holder.wait(timeout: .now() + 30) == .success)
        let clients = try client.send("CLIENT", "LIST").string ?? ""
        #expect(clients.split(separator: "\n").count == 1, "one connection served both: \(clients)")
    }

    @Test func aCallerThatWaitsLongerThanTheCommandTimeoutGetsPoolExhausted() throws {
        let server = try RedisServerProcess()
        defer { server.kill() }
        var configuration = try RedisConfiguration(url: server.url)
        configuration.poolSize = 1
        configuration.commandTimeoutMillis = 300
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let (release, holder) = try holdTheOnlyConnection(client)
        defer {
            release.signal()
            _ = holder.wait(timeout: .now() + 30)
        }
        let error = #expect(throws: RedisError.self) { try client.send("PING") }
        #expect(error?.code == .poolExhausted)
        release.signal()
        try #require(holder.wait(timeout: .now() + 30) == .success)
        #expect(try client.send("PING") == .status("PONG"), "the released connection serves again")
    }
}

/// Takes `client`'s only pooled connection on a thread of its own and holds it until `release` is
/// signalled (60 s at most); returns once it is held. `holder` is signalled when the thread ends.
private func holdTheOnlyConnection(
    _ client: RedisClient
) throws -> (release: DispatchSemaphore, holder: DispatchGroup) {
    let holding = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    let holder = startThreads(1) { _ in
        _ = try? client.withConnection { _ in
            holding.signal()
            _ = release.wait(timeout: .now() + 60)
        }
    }
    try #require(holding.wait(timeout: .now() + 30) == .success, "the holder got the connection")
    return (release, holder)
}

/// A configuration for `url` whose connect and command timeouts are `timeoutMillis`, and whose
/// reconnect backoff starts at `backoffMillis` and grows to `maxBackoffMillis`.
private func redisConfiguration(
    _ url: String, timeoutMillis: Int, backoffMillis: Int, maxBackoffMillis: Int
) throws -> RedisConfiguration {
    var configuration = try RedisConfiguration(url: url)
    configuration.connectTimeoutMillis = timeoutMillis
    configuration.commandTimeoutMillis = timeoutMillis
    configuration.reconnectBackoffMillis = backoffMillis
    configuration.maxReconnectBackoffMillis = maxBackoffMillis
    return configuration
}
