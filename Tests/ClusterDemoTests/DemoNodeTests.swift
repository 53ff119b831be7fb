import ClusterDemo
import Foundation
import Logging
import SessionCore
import Testing
import TestSupport
import SystemSupport

@Suite(.serialized, .tags(.integration)) struct DemoNodeTests {
    @Test func endpointsDoWhatTheyPromise() throws {
        let node = try DemoNode(configuration: DemoNodeConfiguration(nodeID: "n-test", port: 0), logger: quietLogger())
        try node.start()
        defer { node.shutdown() }
        let base = "http://127.0.0.1:\(node.port)"
        let client = CurlClient()

        let health = try client.request("GET", "\(base)/healthz")
        #expect(health.status == 200)
        #expect(health.header("X-Served-By") == ["n-test"])

        let empty = try client.request("GET", "\(base)/api/session")
        #expect(empty.body == "{\"node\":\"n-test\",\"count\":0,\"user\":null}")
        #expect(empty.header("Set-Cookie").isEmpty, "reading creates no session")

        #expect(try client.request("POST", "\(base)/api/counter").body == "{\"node\":\"n-test\",\"count\":1}")
        #expect(try client.request("POST", "\(base)/api/counter").body == "{\"node\":\"n-test\",\"count\":2}")
        let before = try #require(client.cookie("sid"))

        let login = try client.request("POST", "\(base)/api/login", body: "{\"user\":\"ada\"}")
        #expect(login.body == "{\"node\":\"n-test\",\"count\":2,\"user\":\"ada\"}")
        #expect(client.cookie("sid") != before, "login regenerates the ID")

        let bad = try client.request("POST", "\(base)/api/login", body: "not json")
        #expect(bad.status == 400)
        #expect(bad.header("X-Served-By") == ["n-test"], "errors name the node too")

        let logout = try client.request("POST", "\(base)/api/logout")
        #expect(logout.status == 200)
        #expect(try client.request("GET", "\(base)/api/session").body == "{\"node\":\"n-test\",\"count\":0,\"user\":null}")

        let metrics = prometheusSamples(try client.request("GET", "\(base)/metrics").body)
        #expect(metrics["session_node_requests_total{node=\"n-test\",method=\"POST\",route=\"/api/counter\",status=\"200\"}"] == 2)
        #expect(metrics["session_store_operation_duration_seconds_count{node=\"n-test\",operation=\"apply\"}"] != nil)
        #expect(metrics["session_store_sessions{node=\"n-test\"}"] == 0)
        #expect(try client.request("GET", "\(base)/nope").status == 404)
        #expect(try client.request("DELETE", "\(base)/api/counter").status == 405)
    }

    @Test func nodeProcessServesAndExitsCleanlyOnSIGTERM() throws {
        let (child, port) = try ChildProcess.sessionClusterNode(id: "proc-1")  // healthy
        defer { child.stop(signal: SIGKILL, timeout: 2) }
        let client = CurlClient()
        #expect(try client.request("POST", "http://127.0.0.1:\(port)/api/counter").body.contains("\"count\":1"))
        let status = child.stop(signal: SIGTERM, timeout: 10)
        #expect(status == 0, "graceful shutdown exits 0; output: \(child.output)")
        #expect(child.output.contains("stopped"))
    }

    /// A usage error (exit 64, not a trap) whose message names the option at fault; the wording
    /// of the message is not pinned.
    @Test(arguments: [
        (["--idle-timeout", "0"], "--idle-timeout"),
        (["--absolute-timeout=-1"], "--absolute-timeout"),
        (["--handler-threads", "5000"], "--handler-threads"),
        (["--exclusive-sessions"], "--exclusive-sessions"),
    ])
    func badNodeOptionsAreClearErrorsNotCrashes(arguments: [String], option: String) throws {
        let child = try ChildProcess(try ChildProcess.sessionClusterBinary(), ["node"] + arguments)
        defer { child.stop(signal: SIGKILL, timeout: 2) }
        let exit = child.waitForExit(timeout: 60)
        #expect(exit == .exited(64), "a usage error, not a trap: \(child.output)")
        #expect(child.output.contains(option), "the error names \(option): \(child.output)")
    }

    @Test func unknownStrategyIsAClearError() throws {
        let child = try ChildProcess(try ChildProcess.sessionClusterBinary(), ["node", "--strategy", "bogus"])
        defer { child.stop(signal: SIGKILL, timeout: 2) }
        let exit = child.waitForExit(timeout: 60)
        #expect(exit != nil && exit != .exited(0), "\(child.output)")
        #expect(child.output.contains("unknown strategy 'bogus'"))
    }
}
