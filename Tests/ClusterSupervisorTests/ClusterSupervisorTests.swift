import Foundation
import MiniHTTP
import TestSupport
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

    /// Nodes that take a while to drain on SIGTERM are waited for together, not one after another:
    /// each draining shell finishes only once all three have received SIGTERM (a file the test
    /// creates when the log shows three "term" lines), so signalling them one at a time, waiting
    /// for each, leaves the first one draining until it is killed. No clock is read: the grace
    /// period (5 s) is only the bound for the shell that ignores SIGTERM, which is then killed.
    @Test func terminateAllSignalsEveryProcessFirstThenWaitsForAllTogether() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("drain-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("log").path
        let release = directory.appendingPathComponent("release").path
        let script =
            "trap 'echo term; while [ ! -e \(release) ]; do sleep 0.02; done; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
        var processes = try (0..<3).map { _ in
            try SpawnedProcess(executable: "/bin/sh", arguments: ["-c", script], environment: [:], logPath: log)
        }
        processes.append(
            try SpawnedProcess(
                executable: "/bin/sh", arguments: ["-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
                environment: [:], logPath: log))
        let lines: @Sendable () -> [Substring] = {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
        }
        // Every shell has set its trap.
        try #require(waitUntil(timeout: 10) { lines().count == 4 })
        // Releases the drains once all three are draining at the same time (gives up after 20 s).
        let releaser = Thread {
            _ = waitUntil(timeout: 20) { lines().filter { $0 == "term" }.count == 3 }
            _ = FileManager.default.createFile(atPath: release, contents: nil)
        }
        releaser.start()
        let statuses = SpawnedProcess.terminateAll(processes, graceMillis: 5_000)
        _ = FileManager.default.createFile(atPath: release, contents: nil)  // in case the releaser still waits
        #expect(statuses == [.exited(code: 0), .exited(code: 0), .exited(code: 0), .signaled(signal: SIGKILL)])
        #expect(processes.allSatisfy { !$0.isRunning })
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
        #expect(PrometheusText.sample("session_store_sessions", in: text) == 42)
        #expect(PrometheusText.sample("missing", in: text) == nil)
    }

    @Test func controlHostsDeriveFromTheListenAddress() {
        #expect(
            ControlAPI.allowedHosts(listenHost: "127.0.0.1", port: 8080) == ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"])
        #expect(ControlAPI.allowedHosts(listenHost: "::1", port: 9000) == ["127.0.0.1:9000", "localhost:9000", "[::1]:9000"])
        #expect(ControlAPI.allowedHosts(listenHost: "192.168.1.20", port: 8080).last == "192.168.1.20:8080")
        #expect(ControlAPI.allowedHosts(listenHost: "FE80::1", port: 8080).last == "[fe80::1]:8080")
        #expect(ControlAPI.allowedHosts(listenHost: "127.0.0.1", port: 80).contains("localhost"), "browsers leave out :80")
    }

    @Test func controlRequestsFromOtherPagesAreRefused() {
        let hosts = ControlAPI.allowedHosts(listenHost: "127.0.0.1", port: 8080)
        func code(_ method: String, _ headers: HTTPHeaders) -> String? {
            guard let refused = ControlAPI.refusal(HTTPRequestHead(method: method, target: "/_cluster/status", headers: headers), allowedHosts: hosts)
            else { return nil }
            #expect(refused.status == 403)
            let body = String(decoding: refused.body, as: UTF8.self)
            return ["unknown_host", "cross_origin", "missing_control_header"].first { body.contains("\"\($0)\"") } ?? body
        }
        let control = ControlAPI.controlHeader
        #expect(code("GET", ["Host": "127.0.0.1:8080"]) == nil)
        #expect(code("GET", ["Host": "Localhost:8080", "Origin": "http://localhost:8080"]) == nil)
        #expect(code("POST", ["Host": "[::1]:8080", control.name: control.value]) == nil)
        #expect(code("POST", ["Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080", control.name: control.value]) == nil)
        #expect(code("GET", [:]) == "unknown_host")
        #expect(code("GET", ["Host": "evil.example:8080"]) == "unknown_host")
        #expect(code("GET", ["Host": "127.0.0.1:8081"]) == "unknown_host")
        #expect(code("GET", ["Host": "127.0.0.1:8080", "Origin": "http://evil.example"]) == "cross_origin")
        #expect(code("POST", ["Host": "127.0.0.1:8080", "Origin": "http://localhost:8080", control.name: "1"]) == "cross_origin")
        #expect(code("POST", ["Host": "127.0.0.1:8080", "Origin": "https://127.0.0.1:8080", control.name: "1"]) == "cross_origin")
        #expect(code("POST", ["Host": "127.0.0.1:8080", "Origin": "null", control.name: "1"]) == "cross_origin")
        #expect(code("POST", ["Host": "127.0.0.1:8080", "Content-Type": "text/plain"]) == "missing_control_header")
        #expect(code("POST", ["Host": "127.0.0.1:8080", control.name: "0"]) == "missing_control_header")
        #expect(code("DELETE", ["Host": "127.0.0.1:8080"]) == "missing_control_header")
        let onPort80 = ControlAPI.allowedHosts(listenHost: "127.0.0.1", port: 80)
        let head = HTTPRequestHead(
            method: "POST", target: "/_cluster/nodes/node-1/kill",
            headers: ["Host": "127.0.0.1:80", "Origin": "http://127.0.0.1", control.name: "1"])
        #expect(ControlAPI.refusal(head, allowedHosts: onPort80) == nil, "an Origin without :80 is the same origin")
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
