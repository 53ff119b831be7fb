import Foundation
import Testing

@testable import ClusterSupervisor

@Suite("Supervisor parts")
struct ClusterSupervisorTests {
    @Test func spawnedProcessReportsHowItEnded() throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("spawn-\(UUID().uuidString).log").path
        defer { unlink(log) }
        let exits = try SpawnedProcess(executable: "/bin/sh", arguments: ["-c", "echo hi; exit 3"], environment: [:], logPath: log)
        #expect(exits.waitForExit(timeoutMillis: 5_000) == .exited(code: 3))
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "hi\n", "stdout goes to the log file")
        #expect(!exits.send(SIGTERM), "no signal after the process was reaped")

        let sleeper = try SpawnedProcess(executable: "/bin/sleep", arguments: ["30"], environment: [:], logPath: log)
        #expect(sleeper.isRunning)
        #expect(getpgid(sleeper.pid) == sleeper.pid, "its own process group: a terminal's Ctrl-C reaches only the supervisor")
        #expect(sleeper.send(SIGSTOP))
        #expect(sleeper.terminate(graceMillis: 5_000) == .signaled(signal: SIGTERM), "SIGTERM reaches a stopped process too")
        #expect(ExitStatus.signaled(signal: SIGKILL).description == "killed by SIGKILL")
    }

    @Test func spawnFailureIsAClearError() {
        #expect(throws: SupervisorError.self) {
            _ = try SpawnedProcess(executable: "/nonexistent/binary", arguments: [], environment: [:], logPath: "/dev/null")
        }
    }

    @Test func prometheusSampleIsFoundByMetricName() {
        let text = """
            # TYPE session_store_sessions_total counter
            session_store_sessions_total 99
            session_store_sessions{node="n1"} 42
            """
        #expect(NodeProbe.sample("session_store_sessions", in: text) == 42)
        #expect(NodeProbe.sample("missing", in: text) == nil)
    }

    @Test func configurationIsValidated() {
        for bad in [
            ClusterConfiguration(nodeCount: 0, executable: "/bin/sh"),
            ClusterConfiguration(replicationMode: "eventually", executable: "/bin/sh"),
            ClusterConfiguration(executable: "/nonexistent"),
        ] {
            #expect(throws: SupervisorError.self) { try bad.validate() }
        }
    }
}
