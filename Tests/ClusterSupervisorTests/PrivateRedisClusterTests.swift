import Foundation
import MiniHTTP
import TestSupport
import Testing

@testable import ClusterSupervisor

/// The private Redis of the demo, the tests and the benchmark, in this process:
/// a single redis-server and a Redis Cluster of 3 primaries and 3 replicas,
/// killed, restarted and shut down by PID.
///
/// Time bounds are generous on purpose (a 2-core machine running other tests):
/// with `--cluster-node-timeout 1000` a failover takes about 2–4 s, the tests allow 30 s.
@Suite("Private Redis: server and cluster", .serialized, .tags(.integration))
struct PrivateRedisClusterTests {
    /// Longest wait for a replica to take over, or for a restarted node to rejoin (see the suite).
    static let failoverBound: Double = 30

    @Test func respRepliesAreParsed() {
        #expect(RedisProbe.parse(Array("+PONG\r\n".utf8)) == .complete(.simple("PONG")))
        #expect(RedisProbe.parse(Array(":42\r\n".utf8)) == .complete(.integer(42)))
        #expect(RedisProbe.parse(Array("$5\r\nhello\r\n".utf8)) == .complete(.bulk("hello")))
        #expect(RedisProbe.parse(Array("$5\r\nhel".utf8)) == .incomplete)
        #expect(RedisProbe.parse(Array("$-1\r\n".utf8)) == .complete(.bulk(nil)))
        #expect(RedisProbe.parse(Array("-ERR no\r\n".utf8)) == .complete(.error("ERR no")))
        #expect(RedisProbe.parse(Array("*1\r\n".utf8)) == .incomplete)
        #expect(
            RedisProbe.parse(Array("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n".utf8))
                == .complete(.array([.bulk("127.0.0.1"), .bulk("6379")])), "SENTINEL get-master-addr-by-name")
        #expect(RedisProbe.parse(Array("*-1\r\n".utf8)) == .complete(.array(nil)))
        #expect(RedisProbe.parse(Array("*2\r\n*1\r\n:1\r\n+x\r\n".utf8)) == .complete(.array([.array([.integer(1)]), .simple("x")])))
        #expect(RedisProbe.parse(Array("*1\r\n$3\r\nab".utf8)) == .incomplete)
        #expect(RedisProbe.parse(Array("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n".utf8)) == .invalid, "nested too deep")
        #expect(RedisProbe.parse(Array("*x\r\n".utf8)) == .invalid)
        let nodes = """
            0c04 127.0.0.1:23002@24002 master - 0 1 2 connected 5461-10922
            2570 127.0.0.1:23001@24001 myself,master - 0 1 1 connected 0-5460 7 [8->-abc]
            """
        func own(_ text: String) -> String? { RedisNodeStatus.ownLine(clusterNodes: text).map { "\($0.role) \($0.slots)" } }
        #expect(own(nodes) == "master 5462", "a single slot counts, a migrating one does not")
        #expect(own("6467 127.0.0.1:1@2 myself,slave 0c04 0 1 3 connected") == "replica 0")
        #expect(own("garbage") == nil)
    }

    @Test func singleServerIsKilledAndRestartedOnItsPort() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try PrivateRedisServer(name: "redis", directory: directory)
        defer { server.shutdown(graceMillis: 0) }
        let first = try #require(server.pid)
        #expect(isRedis(first, port: server.port))
        #expect(server.status().up && server.status().role == "master" && server.status().keys == 0)
        #expect(RedisProbe.command(port: server.port, ["SET", "k", "v"]) == .simple("OK"))
        #expect(server.status().keys == 1)

        try server.kill()
        #expect(!server.isRunning && !isRedis(first, port: server.port), "SIGKILL: gone")
        #expect(server.process?.exitStatus == .signaled(signal: SIGKILL))
        #expect(!server.status().up && server.status().role == nil)
        #expect(throws: SupervisorError.self, "nothing to kill") { try server.kill() }

        try server.restart()
        let second = try #require(server.pid)
        #expect(second != first && isRedis(second, port: server.port), "the same port, a new process")
        #expect(server.status().keys == 0, "no persistence: it comes back empty")
        server.shutdown()
        #expect(!isRedis(second, port: server.port))
        #expect(server.pid == nil)
    }

    @Test func clusterComesUpWithThreePrimariesAndThreeReplicasAndShutsDown() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = try PrivateRedisCluster(directory: directory)
        var pids = cluster.pids
        defer { stopAndCheck(cluster, pids) }

        #expect(cluster.nodeNames == (1...6).map { "redis-\($0)" })
        #expect(cluster.seeds == cluster.servers.map { "127.0.0.1:\($0.port)" })
        #expect(Set(cluster.servers.map(\.port)).count == 6)
        #expect(pids.count == 6)
        for server in cluster.servers {
            #expect(isRedis(server.pid ?? 0, port: server.port), "\(server.name) is our redis-server")
            #expect(FileManager.default.fileExists(atPath: "\(directory)/nodes-\(server.port).conf"))
        }
        let status = cluster.status()
        #expect(status.allSatisfy { $0.up && $0.clusterState == "ok" }, "\(status)")
        #expect(status.filter { $0.role == "master" }.map(\.name) == ["redis-1", "redis-2", "redis-3"], "\(status)")
        #expect(status.filter { $0.role == "replica" }.count == 3, "\(status)")
        #expect(status.compactMap(\.slots).reduce(0, +) == 16384, "\(status)")
        #expect(status.filter { $0.role == "master" }.allSatisfy { ($0.slots ?? 0) > 5000 }, "\(status)")

        // The guards: one watcher per redis-server, children of this process until shutdown.
        pids += cluster.servers.compactMap { server in currentGuardPID(server) }
        #expect(pids.count == 12)
    }

    @Test func replicaTakesOverAKilledPrimaryWhichRejoinsAsAReplica() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = try PrivateRedisCluster(directory: directory)
        let pids = cluster.pids
        defer { stopAndCheck(cluster, pids) }
        let replicas = Set(cluster.status().filter { $0.role == "replica" }.map(\.name))

        try cluster.kill("redis-1")
        #expect(cluster.status()[0].up == false)
        let tookOver = waitUntil(timeout: Self.failoverBound) {
            let status = cluster.status().filter(\.up)
            let masters = status.filter { $0.role == "master" }
            return masters.count == 3 && masters.compactMap(\.slots).reduce(0, +) == 16384
                && status.allSatisfy { $0.clusterState == "ok" }
        }
        #expect(tookOver, "a replica became master within \(Self.failoverBound) s: \(cluster.status())")
        let promoted = cluster.status().filter { $0.role == "master" && replicas.contains($0.name) }.map(\.name)
        #expect(promoted.count == 1, "one replica took redis-1's slots: \(cluster.status())")

        try cluster.restart("redis-1")
        #expect(cluster.servers[0].isRunning)
        let rejoined = waitUntil(timeout: Self.failoverBound) {
            let first = cluster.status()[0]
            return first.up && first.role == "replica" && first.slots == 0 && first.clusterState == "ok"
        }
        #expect(rejoined, "redis-1 rejoined as a replica within \(Self.failoverBound) s: \(cluster.status())")
        try cluster.waitUntilHealthy(timeoutMillis: Int(Self.failoverBound * 1000))
        #expect(throws: SupervisorError.self) { try cluster.kill("redis-9") }
    }

    /// The supervisor's handling of `redis-cluster` without nodes (they need `--redis-cluster`,
    /// which the node command gets separately): its arguments for the nodes, and the control API.
    @Test func supervisorControlsTheClusterNodesThroughTheControlAPI() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let supervisor = try ClusterSupervisor(
            configuration: ClusterConfiguration(strategy: .redisCluster, nodeCount: 2, port: 8080, executable: "/bin/sh"),
            logger: .init(label: "test"))
        defer { supervisor.shutdown() }  // also when startRedis throws: removes its run directory
        try supervisor.startRedis()
        let cluster = try #require(supervisor.redisCluster)
        let pids = cluster.pids
        defer { stopAndCheck(supervisor, pids) }

        let arguments = try supervisor.nodeArguments(supervisor.nodes[0])
        #expect(arguments.contains("--redis-cluster"))
        #expect(arguments.firstIndex(of: "--strategy").map { arguments[$0 + 1] } == "redis", "the nodes' strategy is redis")
        #expect(arguments.last == cluster.seeds.joined(separator: ","))

        let json = try statusObject(supervisor)
        let redisNodes = try #require(json["redisNodes"] as? [[String: Any]])
        #expect(redisNodes.count == 6)
        #expect(redisNodes.filter { $0["role"] as? String == "master" }.count == 3, "\(redisNodes)")
        #expect(redisNodes.allSatisfy { $0["state"] as? String == "up" && $0["pid"] is Int && $0["keys"] is Int }, "\(redisNodes)")
        #expect(json["redis"] is NSNull, "the single-server field stays null for a cluster")

        let victim = try #require(supervisor.redisServers.first)
        let pid = try #require(victim.pid)
        let refused = post(supervisor, "/_cluster/redis/redis-1/kill", control: false)
        #expect(refused.status == 403 && body(refused).contains("missing_control_header"), "\(body(refused))")
        #expect(post(supervisor, "/_cluster/redis/redis-1/kill", control: true, origin: "http://evil.example").status == 403)
        #expect(victim.pid == pid && isRedis(pid, port: victim.port), "a refused request kills nothing")

        let killed = post(supervisor, "/_cluster/redis/redis-1/kill", control: true)
        #expect(killed.status == 200 && body(killed).contains("\"down\""), "\(body(killed))")
        #expect(!isRedis(pid, port: victim.port))
        #expect(post(supervisor, "/_cluster/redis/redis-1/kill", control: true).status == 409, "already down")
        #expect(post(supervisor, "/_cluster/redis/redis-7/kill", control: true).status == 404)
        #expect(post(supervisor, "/_cluster/redis/redis-1/explode", control: true).status == 404)
        let first = try #require((try statusObject(supervisor)["redisNodes"] as? [[String: Any]])?.first)
        #expect(first["state"] as? String == "down" && first["role"] is NSNull, "\(first)")

        let restarted = post(supervisor, "/_cluster/redis/redis-1/restart", control: true)
        #expect(restarted.status == 200 && body(restarted).contains("\"restarting\""), "\(body(restarted))")
        let back = waitUntil(timeout: Self.failoverBound) {
            let first = supervisor.redisStatus.first
            return first?.restarting == false && first?.status.up == true
        }
        #expect(back, "redis-1 is up again: \(supervisor.redisStatus)")
        #expect(victim.pid != nil && victim.pid != pid)
        try cluster.waitUntilHealthy(timeoutMillis: Int(Self.failoverBound * 1000))
    }

    // MARK: - Helpers

    /// `shutdown()`, then none of `pids` may run any more.
    private func stopAndCheck(_ cluster: PrivateRedisCluster, _ pids: [pid_t]) {
        cluster.shutdown(graceMillis: 2_000)
        #expect(cluster.pids.isEmpty)
        for pid in pids { #expect(!ProcessTable.isAlive(pid), "pid \(pid) outlived shutdown()") }
    }

    private func stopAndCheck(_ supervisor: ClusterSupervisor, _ pids: [pid_t]) {
        let all = pids + supervisor.redisServers.compactMap(\.pid)
        supervisor.shutdown()
        #expect(supervisor.childPIDs.isEmpty)
        for pid in all { #expect(!ProcessTable.isAlive(pid), "pid \(pid) outlived shutdown()") }
    }

    /// The guard watching `server`'s process (a `/bin/sh` child of this process whose argument is its PID).
    private func currentGuardPID(_ server: PrivateRedisServer) -> pid_t? {
        guard let pid = server.pid else { return nil }
        return ProcessTable.children(of: getpid()).first { child in
            let arguments = (try? String(contentsOfFile: "/proc/\(child)/cmdline", encoding: .utf8))?
                .split(separator: "\0").map(String.init) ?? []
            return arguments.contains("parent-death-guard") && arguments.last == "\(pid)"
        }
    }

    private func statusObject(_ supervisor: ClusterSupervisor) throws -> [String: Any] {
        let json = ControlAPI.statusJSON(supervisor)
        return try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], "\(json)")
    }

    private func post(_ supervisor: ClusterSupervisor, _ path: String, control: Bool, origin: String? = nil) -> HTTPResponse {
        var headers: HTTPHeaders = ["Host": "127.0.0.1:8080"]
        if control { headers.add(name: ControlAPI.controlHeader.name, value: ControlAPI.controlHeader.value) }
        if let origin { headers.add(name: "Origin", value: origin) }
        return ControlAPI.respond(to: supervisor, head: HTTPRequestHead(method: "POST", target: path, headers: headers))
    }

    private func body(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }
}

/// A new directory for a private Redis's files (the caller removes it).
func temporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("private-redis-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Whether `pid` runs and is a redis-server on `port` (redis-server sets its title to `redis-server 127.0.0.1:PORT`).
func isRedis(_ pid: pid_t, port: Int) -> Bool {
    guard let line = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8) else { return false }
    return line.contains("redis-server") && line.contains(":\(port)") && ProcessTable.isAlive(pid)
}
