import Foundation
import TestSupport
import Testing

/// `session-cluster bench` as a user runs it: it launches each strategy's
/// cluster, kills and restarts a node, and reports what the users lost.
@Suite("Bench process: failover per strategy")
struct BenchProcessTests {
    @Test func killAndRestartAreMeasuredPerStrategy() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let process = try ChildProcess(
            try ChildProcess.sessionClusterBinary(),
            [
                "bench", "--strategies", "replicate-sync,local", "--nodes", "3", "--users", "20", "--rate", "400",
                "--duration", "4s", "--fault", "kill:node2@1.2s", "--fault", "restart:node2@2.5s",
                "--report", directory.path,
            ])
        let finished = waitUntil(timeout: 120) { !process.process.isRunning }
        let status = process.stop(signal: SIGKILL, timeout: 1)
        #expect(finished && status == 0, "\(process.output)")

        let data = try Data(contentsOf: directory.appendingPathComponent("report.json"))
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let strategies = try #require(report["strategies"] as? [[String: Any]])
        #expect(strategies.compactMap { $0["name"] as? String } == ["replicate-sync", "local"])
        func counts(_ name: String) throws -> [String: Int] {
            let strategy = try #require(strategies.first { $0["name"] as? String == name })
            let summary = try #require(strategy["summary"] as? [String: Any])
            return try #require(summary["counts"] as? [String: Int])
        }
        let replicated = try counts("replicate-sync")
        #expect(replicated["successes", default: 0] > 1_000, "\(replicated)")
        for kind in ["lostSessions", "lostUpdates", "duplicates", "staleReads"] {
            #expect(replicated[kind] == 0, "replicate-sync across a SIGKILL: \(kind) \(replicated)")
        }
        #expect(try counts("local")["lostSessions", default: 0] > 0, "local sessions break under round robin")

        let faults = try #require(strategies.first?["faults"] as? [[String: Any]])
        #expect(faults.compactMap { $0["action"] as? String } == ["kill", "restart"])
        #expect(faults.allSatisfy { $0["error"] == nil }, "the supervisor carried out every fault: \(faults)")
        let html = try String(contentsOf: directory.appendingPathComponent("report.html"), encoding: .utf8)
        #expect(html.components(separatedBy: "<svg").count - 1 == 2, "one timeline per strategy")
        #expect(process.output.contains("replicate-sync") && process.output.contains("report:"))
    }

    @Test func badFaultSpecIsAClearError() throws {
        let process = try ChildProcess(
            try ChildProcess.sessionClusterBinary(), ["bench", "--fault", "explode:node2@1s", "--duration", "2s"])
        #expect(waitUntil(timeout: 20) { !process.process.isRunning })
        #expect(process.stop(signal: SIGKILL, timeout: 1) != 0)
        #expect(process.output.contains("explode"), "\(process.output)")
    }
}
