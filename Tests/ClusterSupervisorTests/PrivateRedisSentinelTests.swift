import Foundation
import TestSupport
import Testing

@testable import ClusterSupervisor

/// The private primary, replica and Sentinel of `demo --strategy redis --redis-replicas 1 --sentinel`:
/// in this process (`PrivateRedisReplicaSet`), and as the demo a user runs, driven through the balancer
/// while the primary is killed from the control API.
///
/// Time bounds are generous on purpose (a 2-core machine running other tests): with
/// `down-after-milliseconds 1000` the Sentinel promotes the replica in about 2–4 s (the tests allow
/// `failoverBound`); a restarted old primary is turned into a replica about 8–10 s after it is back
/// (Sentinel waits 4 × its 2 s publish period first; the tests allow `rejoinBound`).
@Suite("Private Redis: primary, replica and Sentinel", .serialized, .tags(.integration))
struct PrivateRedisSentinelTests {
    /// Longest wait for the Sentinel to promote the replica after the primary was killed.
    static let failoverBound: Double = 20
    /// Longest wait for a restarted old primary to become a replica of the new master.
    static let rejoinBound: Double = 40

    @Test func sentinelPromotesTheReplicaAndTheOldPrimaryRejoinsAsReplica() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let set = try PrivateRedisReplicaSet(replicas: 1, sentinel: true, directory: directory)
        var pids = set.pids
        defer { stopAndCheck(set, &pids) }
        let replica = try #require(set.replicas.first)
        let sentinel = try #require(set.sentinel)

        #expect(set.servers.map(\.name) == ["redis-1", "redis-2", "sentinel-1"])
        #expect(pids.count == 3 && Set(set.servers.map(\.port)).count == 3)
        #expect(isRedis(set.primary.pid ?? 0, port: set.primary.port) && isRedis(replica.pid ?? 0, port: replica.port))
        #expect(set.currentMaster() == set.primary.address, "the Sentinel names redis-1 at the start")
        #expect(set.primary.status().role == "master")
        let replicaStatus = replica.status()
        #expect(replicaStatus.role == "replica" && replicaStatus.master == set.primary.address, "\(replicaStatus)")
        let sentinelStatus = sentinel.status()
        #expect(sentinelStatus.up && sentinelStatus.role == "sentinel", "\(sentinelStatus)")
        #expect(sentinelStatus.master == set.primary.address && sentinelStatus.keys == nil, "\(sentinelStatus)")
        let config = try String(contentsOfFile: "\(directory)/sentinel-\(sentinel.port).conf", encoding: .utf8)
        #expect(config.contains("sentinel monitor mymaster 127.0.0.1 \(set.primary.port) 1"), "\(config)")

        #expect(RedisProbe.command(port: set.primary.port, ["SET", "k", "v"]) == .simple("OK"))
        #expect(waitUntil(timeout: 10) { RedisProbe.command(port: replica.port, ["GET", "k"]) == .bulk("v") }, "replicated")

        let killedAt = Date()
        try set.primary.kill()
        let promoted = waitUntil(timeout: Self.failoverBound) {
            set.currentMaster() == replica.address && replica.status().role == "master"
        }
        #expect(promoted, "the Sentinel promotes redis-2 within \(Self.failoverBound) s; Sentinel log: \(log(sentinel))")
        print("[PrivateRedisSentinel] redis-2 promoted \(Int(Date().timeIntervalSince(killedAt) * 1000)) ms after the kill")
        #expect(RedisProbe.command(port: replica.port, ["GET", "k"]) == .bulk("v"), "the new master has the data")
        #expect(RedisProbe.command(port: replica.port, ["SET", "k2", "v2"]) == .simple("OK"), "and takes writes")

        // The failover is over once the Sentinel's view of the master carries no failover flag; a
        // primary back during the failover's own steps may be left alone until the failover timeout.
        #expect(
            waitUntil(timeout: Self.failoverBound) { Self.sentinelFlags(port: sentinel.port) == "master" },
            "the failover ends: flags \(Self.sentinelFlags(port: sentinel.port) ?? "?")")
        try set.primary.restart()
        pids += set.primary.pid.map { [$0] } ?? []
        let rejoined = waitUntil(timeout: Self.rejoinBound) {
            let status = set.primary.status()
            return status.role == "replica" && status.master == replica.address
        }
        #expect(rejoined, "the Sentinel makes the old primary a replica; Sentinel log: \(log(sentinel))")
        #expect(set.currentMaster() == replica.address, "and keeps redis-2 the master")
        #expect(
            waitUntil(timeout: 10) { RedisProbe.command(port: set.primary.port, ["GET", "k2"]) == .bulk("v2") },
            "the old primary copies the new master")

        try sentinel.restart()
        pids += sentinel.pid.map { [$0] } ?? []
        #expect(
            waitUntil(timeout: 10) { set.currentMaster() == replica.address },
            "a restarted Sentinel reads back its rewritten configuration")
    }

    /// The `flags` of `SENTINEL MASTER mymaster` ("master" when nothing is under way).
    static func sentinelFlags(port: Int) -> String? {
        guard case .array(let fields?) = RedisProbe.command(port: port, ["SENTINEL", "MASTER", "mymaster"]) else { return nil }
        let texts = fields.map(\.text)
        guard let index = texts.firstIndex(of: "flags"), index + 1 < texts.count else { return nil }
        return texts[index + 1]
    }

    @Test func replicasWithoutSentinelAreCopies() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let set = try PrivateRedisReplicaSet(replicas: 2, sentinel: false, directory: directory)
        var pids = set.pids
        defer { stopAndCheck(set, &pids) }
        #expect(set.servers.map(\.name) == ["redis-1", "redis-2", "redis-3"] && set.sentinel == nil)
        #expect(set.currentMaster() == nil)
        for replica in set.replicas {
            #expect(replica.status().role == "replica" && replica.status().master == set.primary.address)
        }
        #expect(throws: SupervisorError.self, "no Sentinel without a replica") {
            try PrivateRedisReplicaSet(replicas: 0, sentinel: true, directory: directory)
        }
    }

    @Test func configurationRefusesSentinelSettingsThatDoNotFit() throws {
        func refusal(_ change: (inout ClusterConfiguration) -> Void) -> String? {
            var configuration = ClusterConfiguration(strategy: .redis, port: 0, executable: "/bin/sh")
            change(&configuration)
            do {
                _ = try ClusterSupervisor(configuration: configuration, logger: .init(label: "test"))
                return nil
            } catch {
                return error.message
            }
        }
        #expect(refusal { $0.redisSentinel = true }?.contains("--redis-replicas 1") == true)
        #expect(refusal { $0.redisReplicas = 4 }?.contains("0...3") == true)
        #expect(refusal { $0.strategy = .replicate; $0.redisReplicas = 1 }?.contains("go with --strategy redis") == true)
        #expect(refusal { $0.strategy = .redisCluster; $0.redisSentinel = true }?.contains("fails over by itself") == true)
    }

    @Test func demoRefusesSentinelWithoutRedis() throws {
        let process = try ChildProcess(
            try ChildProcess.sessionClusterBinary(), ["demo", "--strategy", "replicate", "--sentinel", "--port", "0"])
        let status = process.stop(signal: 0, timeout: 10)
        #expect(status != nil && status != 0)
        #expect(process.output.contains("--sentinel go with --strategy redis"), "\(process.output)")
    }

    /// The demo as a user runs it: count through the balancer, kill redis-1 from the control API,
    /// and the count goes on once the Sentinel promoted redis-2 (no session lost).
    @Test func demoCountsOnAcrossAKilledPrimary() throws {
        try #require(RedisServerProcess.isInstalled, "redis-server is not installed; scripts/test.sh installs it")
        let demo = try DemoProcess(["--strategy", "redis", "--redis-replicas", "1", "--sentinel", "--nodes", "2"])
        defer { demo.stop() }  // SIGTERM; every child (nodes, redis-servers, Sentinel) must be gone
        let client = CurlClient()
        var counts: [Int] = []
        for _ in 0..<4 {
            let answer = try client.request("POST", "\(demo.base)/api/counter")
            #expect(answer.status == 200, "\(answer.body)")
            counts.append(try demoCount(answer))
        }
        let status = try #require(demo.status())
        #expect(status["redisSentinel"] as? Bool == true)
        let names = ((status["redisNodes"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }
        #expect(names == ["redis-1", "redis-2", "sentinel-1"], "\(status)")
        let redis2 = try #require(demo.redisNode("redis-2"))
        let redis2Address = "127.0.0.1:\(try #require(redis2["port"] as? Int))"
        #expect(redis2["role"] as? String == "replica")
        #expect(demo.redisNode("sentinel-1")?["role"] as? String == "sentinel")
        let pid = try #require(demo.redisNode("redis-1")?["pid"] as? Int)

        let killed = try CurlClient().request(
            "POST", "\(demo.base)/_cluster/redis/redis-1/kill", headers: DemoProcess.controlHeaders, useJar: false)
        #expect(killed.status == 200, "\(killed.body)")
        #expect(waitUntil(timeout: 5) { !ProcessTable.isAlive(pid_t(pid)) }, "redis-1 is gone")
        let killedAt = Date()
        var answered: CurlClient.Response?
        var attempts: [String] = []  // what each request after the kill got, for the failure message
        let countsAgain = waitUntil(timeout: Self.failoverBound) {
            let answer = try? client.request("POST", "\(demo.base)/api/counter")
            let at = Int(Date().timeIntervalSince(killedAt) * 1000)
            attempts.append("\(at) ms: \(answer.map { "\($0.status) \($0.body)" } ?? "no answer")")
            guard let answer, answer.status == 200 else {
                usleep(200_000)
                return false
            }
            answered = answer
            return true
        }
        #expect(countsAgain, "counting succeeds again within \(Self.failoverBound) s:\n\(demo.output)")
        if let answered { counts.append(try demoCount(answered)) }
        #expect(
            counts == Array(1...5),
            "the session survives the failover: \(counts); after the kill: \(attempts.joined(separator: "; "))")
        #expect(demo.redisNode("sentinel-1")?["master"] as? String == redis2Address, "the Sentinel names redis-2")
        #expect(
            waitUntil(timeout: 5) { demo.redisNode("redis-2")?["role"] as? String == "master" }, "redis-2 is the master")
        #expect(demo.output.contains("redis-1 (redis-server, pid \(pid)) killed by SIGKILL"), "\(demo.output)")
    }

    // MARK: - Helpers

    private func log(_ server: PrivateRedisServer) -> String {
        (try? String(contentsOfFile: server.logPath, encoding: .utf8)).map { String($0.suffix(3_000)) } ?? "(no log)"
    }

    /// `shutdown()`, then none of `pids` (every process the test started) may run any more.
    private func stopAndCheck(_ set: PrivateRedisReplicaSet, _ pids: inout [pid_t]) {
        set.shutdown(graceMillis: 2_000)
        #expect(set.pids.isEmpty)
        for pid in pids {
            let gone = !ProcessTable.isAlive(pid)
            #expect(gone, "pid \(pid) outlived shutdown()")
            if !gone { kill(pid, SIGKILL) }  // by PID: only what the test started
        }
    }
}
