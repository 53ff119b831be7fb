import Foundation
import SessionCore
@testable import SessionRedis
import Synchronization
import SystemSupport
import TestSupport
import Testing

/// Automatic pipelining, on a private redis-server (its statistics are the test's own).
@Suite(.enabled(if: RedisServerProcess.isInstalled, "needs redis-server"), .serialized, .tags(.integration))
struct RedisPipelineTests {
    /// A private redis-server and a client of it, configured by `configure`.
    private func privateClient(
        _ configure: (inout RedisConfiguration) -> Void
    ) throws -> (server: RedisServerProcess, client: RedisClient) {
        let server = try RedisServerProcess()
        var configuration = try RedisConfiguration(url: server.url)
        configure(&configuration)
        return (server, RedisClient(configuration: configuration, logger: quietLogger()))
    }

    /// Reads Redis made to receive commands (`total_reads_processed`), and clients connected.
    private func stats(_ admin: RedisConnection) throws -> (reads: Int, clients: Int) {
        let info = try admin.command(["INFO".redisBytes, "all".redisBytes]).string ?? ""
        func field(_ name: String) -> Int {
            info.split(separator: "\r\n").first { $0.hasPrefix(name + ":") }.flatMap { Int($0.dropFirst(name.count + 1)) } ?? -1
        }
        return (field("total_reads_processed"), field("connected_clients"))
    }

    @Test func manyThreadsShareTwoConnectionsInBatchesAndEachGetsItsOwnReplies() throws {
        let (server, client) = try privateClient { $0.pipelineConnections = 2 }
        defer { server.kill() }
        let admin = try RedisConnection(host: "127.0.0.1", port: server.port, configuration: RedisConfiguration())
        let before = try stats(admin)
        let threads = 32
        let rounds = 200
        let wrong = Mutex<[String]>([])
        let mostClients = Mutex(0)
        let finished = onThreads(threads, seconds: 60) { thread in
            let key = "counter:\(thread)"
            for round in 1...rounds {
                do {
                    // Each reply must be this thread's: its own counter, counting up by one.
                    let value = try client.send("INCR", key).int
                    if value != Int64(round) { wrong.withLock { $0.append("\(key): \(value.map(String.init) ?? "nil") at round \(round)") } }
                } catch {
                    wrong.withLock { $0.append("\(error)") }
                }
                if round == rounds / 2, thread == 0, let clients = try? self.stats(try RedisConnection(
                    host: "127.0.0.1", port: server.port, configuration: RedisConfiguration())).clients
                {
                    mostClients.withLock { $0 = max($0, clients) }
                }
            }
        }
        try #require(finished)
        #expect(wrong.withLock { $0 } == [])
        let after = try stats(admin)
        let commands = threads * rounds
        #expect(after.reads - before.reads < commands, "batches: \(after.reads - before.reads) reads for \(commands) commands")
        // The two shared connections, the admin's, and the probe's own.
        #expect(mostClients.withLock { $0 } <= 4)
    }

    @Test func aServerThatDiesFailsTheWholeBatchAtOnceThenTheClientRecovers() throws {
        let (server, client) = try privateClient {
            $0.commandTimeoutMillis = 500
            $0.reconnectBackoffMillis = 20
            $0.maxReconnectBackoffMillis = 50
        }
        #expect(try client.send("PING") == .status("PONG"))
        server.kill()
        let outcomes = Mutex<[Bool]>([])
        let finished = onThreads(16, seconds: 10) { _ in
            let ok = (try? client.send("PING")) != nil
            outcomes.withLock { $0.append(ok) }
        }
        try #require(finished, "no caller hangs on a dead server")
        #expect(outcomes.withLock { $0 } == Array(repeating: false, count: 16))
        try server.start()
        #expect(waitUntil(timeout: 5) { (try? client.send("PING")) == .status("PONG") })
        server.kill()
    }

    @Test func aWriteNoReplicaAcknowledgesIsAnErrorNotASuccess() throws {
        let (server, client) = try privateClient {
            $0.waitReplicas = 1
            $0.waitTimeoutMillis = 50
        }
        defer { server.kill() }
        let store = RedisSessionStore(client: client, logger: quietLogger())
        let error = #expect(throws: SessionStoreError.self) {
            _ = try store.apply(SessionDelta(id: SessionID.generate(), changes: [.set("a", [0x31])], createIfMissing: true))
        }
        #expect(error?.code == .unavailable, "a write no replica acknowledged is not reported as done")
    }

    @Test func aPoolOfOneIsNotTakenByThePipeline() throws {
        let (server, client) = try privateClient {
            $0.poolSize = 1
            $0.commandTimeoutMillis = 300
        }
        defer { server.kill() }
        #expect(try client.send("PING") == .status("PONG"))
        // A sequence that needs a connection of its own still gets the only one.
        #expect(try client.withConnection { try $0.command(["PING".redisBytes]) } == .status("PONG"))
        #expect(try client.send("PING") == .status("PONG"))
    }

    @Test func blockingCommandsGetAConnectionOfTheirOwn() throws {
        let (server, client) = try privateClient {
            $0.pipelineConnections = 1
            $0.commandTimeoutMillis = 3_000
        }
        defer { server.kill() }
        #expect(try client.send("PING") == .status("PONG"))  // the shared connection is open
        let popped = Mutex<RedisValue?>(nil)
        let blocked = startThreads(1) { _ in
            let value = try? client.send("BLPOP", "list", 0)  // blocks until something is pushed
            popped.withLock { $0 = value }
        }
        #expect(waitUntil(timeout: 5) { (try? client.send("CLIENT", "LIST").string?.contains("cmd=blpop")) == true })
        // Were the BLPOP on the shared connection, these would wait behind it and time out.
        #expect(try client.send("PING") == .status("PONG"))
        #expect(try client.send("LPUSH", "list", "x") == .integer(1))
        try #require(blocked.wait(timeout: .now() + 5) == .success)
        #expect(popped.withLock { $0 } == .array([.bulk(Array("list".utf8)), .bulk(Array("x".utf8))]))
    }
}
