import Foundation
import TestSupport
import Testing

/// `session-cluster bench` as a user runs it: it launches each strategy's
/// cluster, kills and restarts a node, and reports what the users lost.
@Suite("Bench process: failover per strategy", .tags(.integration))
struct BenchProcessTests {
    @Test func killAndRestartAreMeasuredPerStrategy() throws {
        let run = try runBench(["--strategies", "replicate-sync,local", "--duration", "4s"] + killAndRestartNode2)
        let strategies = run.strategies
        #expect(strategies.compactMap { $0["name"] as? String } == ["replicate-sync", "local"])
        func counts(_ name: String) throws -> [String: Int] {
            let strategy = try #require(strategies.first { $0["name"] as? String == name })
            let summary = try #require(strategy["summary"] as? [String: Any])
            return try #require(summary["counts"] as? [String: Int])
        }
        let replicated = try counts("replicate-sync")
        // Served at all (how many depends on the machine's speed: no throughput is asserted).
        #expect(replicated["successes", default: 0] > 0, "\(replicated)")
        for kind in ["lostSessions", "lostUpdates", "duplicates", "staleReads"] {
            #expect(replicated[kind] == 0, "replicate-sync across a SIGKILL: \(kind) \(replicated)")
        }
        #expect(try counts("local")["lostSessions", default: 0] > 0, "local sessions break under round robin")

        let faults = try #require(strategies.first?["faults"] as? [[String: Any]])
        #expect(faults.compactMap { $0["action"] as? String } == ["kill", "restart"])
        #expect(faults.allSatisfy { $0["error"] == nil }, "the supervisor carried out every fault: \(faults)")
        #expect(run.html.components(separatedBy: "<svg").count - 1 == 2, "one timeline per strategy")
        #expect(run.output.contains("replicate-sync") && run.output.contains("report:"))
    }

    /// The redis strategy with a node killed under load, and restarted: the bench starts its own
    /// private redis-server, and the users lose nothing, as with replicate-sync (the sessions
    /// live in Redis, not in the killed node).
    @Test(.enabled(if: RedisServerProcess.isInstalled, "needs redis-server (scripts/test.sh installs it)"))
    func aKilledNodeLosesNothingWithTheRedisStrategy() throws {
        let run = try runBench(["--strategies", "redis", "--duration", "4s"] + killAndRestartNode2)
        let strategy = try #require(run.strategies.first)
        #expect(strategy["name"] as? String == "redis")
        let faults = try #require(strategy["faults"] as? [[String: Any]])
        #expect(faults.compactMap { $0["action"] as? String } == ["kill", "restart"])
        #expect(faults.allSatisfy { $0["error"] == nil }, "the supervisor carried out every fault: \(faults)")
        let summary = try #require(strategy["summary"] as? [String: Any])
        let counts = try #require(summary["counts"] as? [String: Int])
        #expect(counts["successes", default: 0] > 0, "\(counts)")
        for kind in ["lostSessions", "lostUpdates", "duplicates", "staleReads"] {
            #expect(counts[kind] == 0, "redis across a SIGKILL of a node: \(kind) \(counts)")
        }
    }

    /// `--fault rolling@T:GAP`: every node restarted in turn, marked one by one; with
    /// `--no-idempotency-key`, writes carry no key and are not retried.
    @Test func aRollingRestartWithoutKeysIsMarkedNodeByNode() throws {
        let run = try runBench([
            "--strategies", "replicate-sync", "--duration", "9s", "--fault", "rolling@1s:1.5s", "--no-idempotency-key",
        ])
        let strategy = try #require(run.strategies.first)
        let settings = try #require(strategy["settings"] as? [String: Any])
        #expect(settings["faults"] as? [String] == ["rolling:node-1,node-2,node-3@1s:1.5s"])
        #expect(settings["idempotencyKeys"] as? Bool == false)
        let faults = try #require(strategy["faults"] as? [[String: Any]])
        #expect(faults.compactMap { $0["action"] as? String } == ["restart", "restart", "restart"])
        #expect(faults.compactMap { $0["node"] as? String } == ["node-1", "node-2", "node-3"])
        #expect(faults.compactMap { $0["plannedMillis"] as? Int } == [1_000, 2_500, 4_000])
        #expect(faults.allSatisfy { $0["error"] == nil }, "the supervisor restarted every node: \(faults)")
        let summary = try #require(strategy["summary"] as? [String: Any])
        #expect(summary["retries"] as? Int == 0, "no write is retried without a key")
        #expect(try #require(summary["nodes"] as? [String: Int]).keys.sorted() == ["node-1", "node-2", "node-3"])
        // The last restart at 4 s: the share of each node over the last seconds of the run.
        let share = try #require(strategy["settledShare"] as? [String: Any], "\(strategy.keys)")
        #expect(share["lastRestart"] as? String == "restart node-3", "\(share)")
        #expect(share["maxDeviation"] is Double || share["note"] is String, "\(share)")
        #expect(run.output.contains("share after settling (replicate-sync): "), "\(run.output)")
        #expect(run.output.contains("writes (replicate-sync): without Idempotency-Key, not retried"))
    }

    @Test func badRollingSpecsAreClearErrors() throws {
        for (arguments, message) in [
            (["--fault", "rolling@1s", "--duration", "5s"], "missing the gap"),
            (["--fault", "rolling@1s:0s", "--duration", "5s"], "must be more than 0"),
            // 3 nodes: restarts at 1, 2 and 3 s, in a run of 3 s.
            (["--fault", "rolling@1s:1s", "--duration", "3s"], "the last of its 3 restarts would come at 3s"),
            (["--fault", "rolling:node-1,node-9@1s:1s", "--duration", "5s"], "fault on 'node-9'"),
            (["--fault", "rolling@1s:1s", "--duration", "5s", "--target", "http://127.0.0.1:9"], "with --target, name the nodes"),
        ] {
            let process = try ChildProcess(
                try ChildProcess.sessionClusterBinary(),
                ["bench", "--strategies", "local", "--nodes", "3"] + arguments)
            #expect(waitUntil(timeout: 60) { !process.isRunning }, "\(arguments)")
            #expect(process.stop(signal: SIGKILL, timeout: 1) != 0, "\(arguments)")
            #expect(process.output.contains(message), "\(arguments): \(process.output)")
        }
    }

    @Test func badFaultSpecIsAClearError() throws {
        let process = try ChildProcess(
            try ChildProcess.sessionClusterBinary(), ["bench", "--fault", "explode:node2@1s", "--duration", "2s"])
        #expect(waitUntil(timeout: 20) { !process.isRunning })
        #expect(process.stop(signal: SIGKILL, timeout: 1) != 0)
        #expect(process.output.contains("explode"), "\(process.output)")
    }
}

/// node2 SIGKILLed at 1.2 s and restarted at 2.5 s.
private let killAndRestartNode2 = ["--fault", "kill:node2@1.2s", "--fault", "restart:node2@2.5s"]

/// What a `session-cluster bench` run left: its report's strategies, its HTML report and its output.
private struct BenchRun {
    var strategies: [[String: Any]]
    var html: String
    var output: String
}

/// Runs `session-cluster bench` with 3 nodes and 20 users at 400 requests/s, then `arguments`;
/// it must end by itself with status 0 (within 120 s, far beyond a run's own seconds).
private func runBench(_ arguments: [String]) throws -> BenchRun {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: directory) }
    let process = try ChildProcess(
        try ChildProcess.sessionClusterBinary(),
        ["bench", "--nodes", "3", "--users", "20", "--rate", "400", "--report", directory.path] + arguments)
    let finished = waitUntil(timeout: 120) { !process.isRunning }
    let status = process.stop(signal: SIGKILL, timeout: 1)
    #expect(finished && status == 0, "\(process.output)")

    let data = try Data(contentsOf: directory.appendingPathComponent("report.json"))
    let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    return BenchRun(
        strategies: try #require(report["strategies"] as? [[String: Any]]),
        html: try String(contentsOf: directory.appendingPathComponent("report.html"), encoding: .utf8),
        output: process.output)
}
