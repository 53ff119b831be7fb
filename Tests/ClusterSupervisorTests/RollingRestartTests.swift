import Foundation
import MiniHTTP
import Synchronization
import TestSupport
import Testing

@testable import ClusterSupervisor

/// `POST /_cluster/rolling-restart`: the supervisor restarts every node in turn, each once the one
/// before is running and up at the balancer again. Real nodes, real balancer, real sockets.
@Suite("Rolling restart", .serialized, .timeLimit(.minutes(5)), .tags(.integration))
struct RollingRestartTests {
    /// The demo as a user runs it: the dashboard's request (with the control header) starts it,
    /// the status shows it node by node, and every node ends with a new process, one at a time.
    @Test func theEndpointRestartsEveryNodeInTurn() throws {
        let demo = try DemoProcess(["--strategy", "replicate", "--nodes", "3"])
        defer { demo.stop() }
        let client = CurlClient()
        let first = try client.request("POST", "\(demo.base)/api/counter")
        #expect(first.status == 200, "\(first.body)")
        let before = try pids(demo)
        #expect(before.count == 3)
        let idle = try #require(demo.status()?["rollingRestart"] as? [String: Any])
        #expect(idle["inProgress"] as? Bool == false && idle["result"] is NSNull, "\(idle)")

        let url = "\(demo.base)/_cluster/rolling-restart"
        let refused = try CurlClient().request("POST", url, useJar: false)
        #expect(refused.status == 403 && refused.body.contains("missing_control_header"), "\(refused.body)")
        #expect(try CurlClient().request("GET", url, useJar: false).status == 405)
        // What the dashboard's button sends.
        let started = try CurlClient().request(
            "POST", url, headers: DemoProcess.controlHeaders + ["Origin: \(demo.base)", "Accept: application/json"],
            useJar: false)
        #expect(started.status == 202, "\(started.body)")
        let answer = try JSONSerialization.jsonObject(with: Data(started.body.utf8)) as? [String: Any]
        #expect(answer?["order"] as? [String] == ["node-1", "node-2", "node-3"], "\(started.body)")
        let again = try CurlClient().request("POST", url, headers: DemoProcess.controlHeaders, useJar: false)
        #expect(again.status == 409 && again.body.contains("already running"), "\(again.body)")

        // Watch it: which node the status names, when each node got its new process, and how many
        // nodes were out (not running, or not up at the balancer) at once.
        var named: [String] = []
        var replaced: [String] = []
        var mostOut = 0
        var result: String?
        let ended = waitUntil(timeout: 120) {
            guard let status = demo.status(), let rolling = status["rollingRestart"] as? [String: Any],
                let nodes = status["nodes"] as? [[String: Any]]
            else { return false }
            if rolling["inProgress"] as? Bool == true, let node = rolling["node"] as? String, named.last != node {
                named.append(node)
            }
            let out = nodes.filter { $0["state"] as? String != "running" || $0["health"] as? String != "up" }
            mostOut = max(mostOut, out.count)
            for node in nodes {
                if let name = node["name"] as? String, let pid = node["pid"] as? Int, pid != before[name],
                    !replaced.contains(name), node["state"] as? String == "running"
                {
                    replaced.append(name)
                }
            }
            result = rolling["result"] as? String
            return rolling["inProgress"] as? Bool == false && result != nil
        }
        #expect(ended, "the rolling restart ended within 2 minutes:\n\(demo.output)")
        #expect(result == "done", "\(demo.output)")
        // The status is sampled: a step shorter than one poll (a node up again in 300 ms) may
        // go unseen. What it named is in order; the supervisor's events show every step, each
        // node up again before the next one is restarted.
        #expect(named.allSatisfy { ["node-1", "node-2", "node-3"].contains($0) } && named == named.sorted(), "\(named)")
        let steps = demo.output.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("rolling restart "), let colon = line.range(of: "/3: ") else { return nil }
            return String(line[colon.upperBound...])
        }
        #expect(
            steps == [
                "restarting node-1", "node-1 is up again", "restarting node-2", "node-2 is up again",
                "restarting node-3", "node-3 is up again",
            ], "\(demo.output)")
        #expect(replaced == ["node-1", "node-2", "node-3"], "each node got its new process in turn")
        #expect(mostOut <= 1, "one node out at a time")
        let after = try pids(demo)
        for (name, pid) in before {
            #expect(after[name] != nil && after[name] != pid, "\(name) runs a new process")
            #expect(!ProcessTable.isAlive(pid_t(pid)), "\(name)'s old process \(pid) is gone")
            #expect(demo.node(name)?["restarts"] as? Int == 1)
        }
        let final = try #require(demo.status()?["rollingRestart"] as? [String: Any])
        #expect(final["order"] as? [String] == ["node-1", "node-2", "node-3"] && final["node"] as? String == "node-3")
        #expect(demo.output.contains("rolling restart done"), "\(demo.output)")
        // Replicated sessions outlive the restart of every node.
        let next = try client.request("POST", "\(demo.base)/api/counter")
        #expect(next.status == 200 && next.body.contains("\"count\":2"), "\(next.body)")
    }

    /// A node that is not back in time stops the rolling restart there; the others are left alone.
    @Test func aNodeNotBackInTimeStopsIt() throws {
        let events = Mutex<[String]>([])
        var configuration = ClusterConfiguration(
            strategy: .local, nodeCount: 3, port: 0, executable: try ChildProcess.sessionClusterBinary().path)
        configuration.rollingRestartTimeoutMillis = 1
        let supervisor = try ClusterSupervisor(configuration: configuration, logger: .init(label: "test")) { event in
            events.withLock { $0.append(event) }
        }
        try supervisor.start()
        defer { supervisor.shutdown() }
        let before = supervisor.nodes.map { $0.process?.pid }

        #expect(try supervisor.rollingRestart() == ["node-1", "node-2", "node-3"])
        #expect(waitUntil(timeout: 30) { !supervisor.rollingRestartStatus.inProgress })
        let status = supervisor.rollingRestartStatus
        #expect(status.node == "node-1" && status.step == 1)
        #expect(status.result?.hasPrefix("stopped: node-1 was not running and up at the balancer within 0 s") == true, "\(status)")
        #expect(events.withLock { $0 }.contains { $0.hasPrefix("rolling restart stopped: node-1") }, "\(events.withLock { $0 })")
        #expect(supervisor.nodes[0].process?.pid != before[0], "node-1 was restarted")
        #expect(supervisor.nodes.dropFirst().map { $0.process?.pid } == Array(before.dropFirst()), "the others were not")
        // node-1 comes up by itself; a new rolling restart may start.
        #expect(waitUntil(timeout: 30) { supervisor.nodes[0].state == .running })
        let json = ControlAPI.statusJSON(supervisor)
        #expect(json.contains("\"rollingRestart\":{\"inProgress\":false,\"node\":\"node-1\",\"step\":1,"), "\(json)")
    }

    /// Shutdown stops every node (SIGTERM to all, then waits), and refuses a rolling restart.
    @Test func shutdownStopsEveryNodeAndRefusesARollingRestart() throws {
        let supervisor = try ClusterSupervisor(
            configuration: ClusterConfiguration(
                strategy: .local, nodeCount: 3, port: 0, executable: try ChildProcess.sessionClusterBinary().path),
            logger: .init(label: "test"))
        try supervisor.start()
        let pids = supervisor.childPIDs
        #expect(pids.count == 3)
        _ = try supervisor.rollingRestart()
        supervisor.shutdown()  // returns: the rolling restart under way does not keep it waiting
        for pid in pids { #expect(!ProcessTable.isAlive(pid), "pid \(pid) outlived shutdown()") }
        #expect(supervisor.childPIDs.isEmpty, "no node was started again after the shutdown")
        #expect(throws: SupervisorError.self) { _ = try supervisor.rollingRestart() }
        let refused = ControlAPI.respond(
            to: supervisor,
            head: HTTPRequestHead(
                method: "POST", target: "/_cluster/rolling-restart",
                headers: ["Host": supervisor.controlHosts[0], "X-Cluster-Control": "1"]))
        #expect(refused.status == 409, "\(String(decoding: refused.body, as: UTF8.self))")
        #expect(waitUntil(timeout: 10) { !supervisor.rollingRestartStatus.inProgress })
        #expect(supervisor.childPIDs.isEmpty)
    }

    /// Each node's PID in the demo's status.
    private func pids(_ demo: DemoProcess) throws -> [String: Int] {
        let nodes = try #require(demo.status()?["nodes"] as? [[String: Any]])
        var pids: [String: Int] = [:]
        for node in nodes {
            if let name = node["name"] as? String, let pid = node["pid"] as? Int { pids[name] = pid }
        }
        return pids
    }
}
