import Foundation
import TestSupport
import Testing

/// `session-cluster demo` as a user runs it: one process that starts the nodes,
/// the balancer and (for redis) its own redis-server; driven through the balancer
/// with a cookie-carrying client, a node killed through the control API.
@Suite("Demo process: sessions across a killed node, per strategy", .serialized, .tags(.integration))
struct DemoProcessTests {
    @Test(arguments: ["replicate", "redis", "local"])
    func sessionsAcrossAKilledNode(strategy: String) throws {
        if strategy == "redis" && !RedisServerProcess.isInstalled {
            Issue.record("redis-server is not installed; scripts/test.sh installs it")
            return
        }
        let demo = try DemoProcess(["--strategy", strategy, "--nodes", "3"])
        defer { demo.stop() }
        let client = CurlClient()

        var counts: [Int] = []
        var servedBy: [String] = []
        for _ in 0..<6 {
            let answer = try client.request("POST", "\(demo.base)/api/counter")
            #expect(answer.status == 200, "\(answer.body)")
            counts.append(try demoCount(answer))
            servedBy += answer.header("X-Served-By")
        }
        #expect(Set(servedBy) == ["node-1", "node-2", "node-3"], "round robin reaches every node")

        let victim = try #require(servedBy.last)
        let killed = try demo.control(victim, "kill")
        #expect(killed.status == 200, "\(killed.body)")
        #expect(killed.body.contains("\"dead\""), "\(killed.body)")
        #expect(demo.waitForNode(victim, state: "dead"))

        for _ in 0..<6 {
            let answer = try client.request("POST", "\(demo.base)/api/counter")
            #expect(answer.status == 200, "no client-visible error after the kill: \(answer.body)")
            counts.append(try demoCount(answer))
            #expect(!answer.header("X-Served-By").contains(victim))
        }
        switch strategy {
        case "local":
            // The control: a session lives on one node, round robin sends the user elsewhere.
            #expect(counts != Array(1...12), "local sessions cannot follow the user: \(counts)")
            #expect(counts.filter { $0 == 1 }.count >= 3, "\(counts)")
        default:
            #expect(counts == Array(1...12), "the session survives the kill: \(counts)")
        }

        let restarted = try demo.control(victim, "restart")
        #expect(restarted.status == 200, "\(restarted.body)")
        #expect(demo.waitForNode(victim, state: "running"))
        #expect(demo.output.contains("\(victim) killed by SIGKILL"), "the supervisor reports the death:\n\(demo.output)")
    }

    @Test func controlAPIRejectsWhatDoesNotFit() throws {
        let demo = try DemoProcess(["--strategy", "local", "--nodes", "2"])
        defer { demo.stop() }
        let client = CurlClient()
        let base = "\(demo.base)/_cluster/nodes"
        #expect(try demo.control("node-9", "kill").status == 404)
        #expect(try demo.control("node-1", "explode").status == 404)
        #expect(try client.request("GET", "\(base)/node-1/kill", useJar: false).status == 405)
        #expect(try demo.control("node-1", "resume").status == 409, "not stopped")
        #expect(try demo.control("node-1", "stop").status == 200)
        #expect(demo.waitForNode("node-1", state: "stopped"))
        #expect(try demo.control("node-1", "stop").status == 409, "already stopped")
        // While node-1 is frozen, GETs still get answers (timeouts and health checks move them on).
        let answer = try client.request("GET", "\(demo.base)/api/session")
        #expect(answer.status == 200 || answer.status == 504, "\(answer.body)")
        #expect(try demo.control("node-1", "resume").status == 200)
        #expect(demo.waitForNode("node-1", state: "running"))
        #expect(try demo.control("node-2", "kill").status == 200)
        #expect(demo.waitForNode("node-2", state: "dead"))
        #expect(try demo.control("node-2", "kill").status == 409, "already dead")
    }

    /// The dashboard's Cut off / Heal partition: in sync mode the cut-off node says why it refuses,
    /// the count goes on through the others, and once healed every node reaches every other again.
    @Test func aNodeCutOffFromTheDashboardRefusesUntilHealed() throws {
        let demo = try DemoProcess(["--strategy", "replicate", "--replication-mode", "sync", "--nodes", "3"])
        defer { demo.stop() }
        let client = CurlClient()
        #expect(try client.request("POST", "\(demo.base)/api/counter").status == 200)
        let partitions = try #require(demo.status()?["partitions"] as? [String: Any])
        #expect(partitions["available"] as? Bool == true && (partitions["cutLinks"] as? [String])?.isEmpty == true)
        #expect(demo.node("node-3")?["reaches"] as? [String] == ["node-1", "node-2"])

        let cut = try demo.control("node-3", "isolate")
        #expect(cut.status == 200, "\(cut.body)")
        #expect(demo.node("node-3")?["reaches"] as? [String] == [])
        #expect(demo.node("node-1")?["reaches"] as? [String] == ["node-2"])
        #expect(try demo.control("node-9", "isolate").status == 404)
        // Writes go on (through node-1 and node-2 once the balancer took node-3 out); node-3 says why it refuses.
        var counts: [Int] = []
        for _ in 0..<6 {
            let answer = try client.request("POST", "\(demo.base)/api/counter")
            if answer.status == 200 { counts.append(try demoCount(answer)) }
        }
        #expect(counts == counts.sorted() && Set(counts).count == counts.count && !counts.isEmpty, "\(counts)")
        #expect(waitUntil(timeout: 15) { (demo.node("node-3")?["refusing"] as? String)?.contains("majority") == true },
            "\(demo.node("node-3") ?? [:])")

        let healed = try CurlClient().request(
            "POST", "\(demo.base)/_cluster/heal", headers: DemoProcess.controlHeaders, useJar: false)
        #expect(healed.status == 200, "\(healed.body)")
        #expect(try CurlClient().request("POST", "\(demo.base)/_cluster/heal", useJar: false).status == 403, "needs the control header")
        #expect(demo.node("node-3")?["reaches"] as? [String] == ["node-1", "node-2"])
        #expect(waitUntil(timeout: 20) { demo.node("node-3")?["refusing"] is NSNull }, "node-3 rejoined")
    }

    /// Finding 5 of issue 14: another web page must not drive the control API, neither by a
    /// cross-origin "simple" POST (no preflight) nor through DNS rebinding (its own host name).
    @Test func controlAPIRefusesOtherPagesAndHosts() throws {
        // Listening on another loopback address: the allowed hosts follow --host.
        let demo = try DemoProcess(["--strategy", "local", "--nodes", "2", "--host", "127.0.0.2"])
        defer { demo.stop() }
        #expect(demo.base.hasPrefix("http://127.0.0.2:"), "\(demo.base)")
        let authority = String(demo.base.dropFirst("http://".count))
        let port = try #require(authority.split(separator: ":").last.map(String.init))
        let before = try #require(demo.node("node-1")?["pid"] as? Int, "node-1 has a PID")

        /// Expects 403 with `code`, and node-1 still running as the same process.
        func refused(
            _ method: String, _ path: String, _ headers: [String], _ code: String, _ why: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let answer = try CurlClient().request(
                method, "\(demo.base)/_cluster/\(path)", headers: headers, body: method == "POST" ? "kill" : nil, useJar: false)
            #expect(answer.status == 403, "\(why): \(answer.status) \(answer.body)", sourceLocation: sourceLocation)
            #expect(answer.body.contains("\"error\":\"\(code)\""), "\(why): \(answer.body)", sourceLocation: sourceLocation)
            let node = demo.node("node-1")
            #expect(node?["state"] as? String == "running", "\(why): node-1 is \(node ?? [:])", sourceLocation: sourceLocation)
            #expect(node?["pid"] as? Int == before && kill(pid_t(before), 0) == 0, "\(why): node-1's process lives on",
                sourceLocation: sourceLocation)
        }

        // What fetch(url, {method: 'POST', mode: 'no-cors', body: 'kill'}) on another site sends.
        try refused(
            "POST", "nodes/node-1/kill", ["Origin: http://evil.example", "Content-Type: text/plain;charset=UTF-8"],
            "cross_origin", "a cross-origin simple POST")
        try refused(
            "POST", "nodes/node-1/kill", ["Origin: http://evil.example", "X-Cluster-Control: 1"], "cross_origin",
            "the control header from another origin")
        try refused(
            "POST", "nodes/node-1/stop", ["Origin: null", "X-Cluster-Control: 1"], "cross_origin", "an opaque origin")
        try refused(
            "POST", "nodes/node-1/kill", ["Content-Type: text/plain"], "missing_control_header", "a POST without the header")
        // DNS rebinding: evil.example now resolves to 127.0.0.1, so the page is same-origin with itself.
        try refused(
            "POST", "nodes/node-1/kill",
            ["Host: evil.example:\(port)", "Origin: http://evil.example:\(port)", "X-Cluster-Control: 1"],
            "unknown_host", "a rebound host name")
        try refused("GET", "status", ["Host: evil.example:\(port)"], "unknown_host", "status under a rebound host name")
        try refused("GET", "status", ["Host: 127.0.0.1:1"], "unknown_host", "status for another port")
        try refused("GET", "status", ["Host: 127.0.0.3:\(port)"], "unknown_host", "status for another address")
        try refused("GET", "status", ["Origin: http://evil.example"], "cross_origin", "status read from another origin")

        // The operator's own requests: every loopback name, same origin or none.
        let client = CurlClient()
        for host in ["127.0.0.1:\(port)", "localhost:\(port)", "[::1]:\(port)", "LOCALHOST:\(port)"] {
            let answer = try client.request("GET", "\(demo.base)/_cluster/status", headers: ["Host: \(host)"], useJar: false)
            #expect(answer.status == 200, "Host \(host): \(answer.body)")
        }
        let sameOrigin = try demo.control(
            "node-1", "kill", headers: DemoProcess.controlHeaders + ["Origin: \(demo.base)", "Content-Type: text/plain"])
        #expect(sameOrigin.status == 200, "the dashboard's request: \(sameOrigin.body)")
        #expect(demo.waitForNode("node-1", state: "dead"))
        #expect(waitUntil(timeout: 5) { kill(pid_t(before), 0) != 0 }, "node-1's process is gone")
        let viaLocalhost = try demo.control(
            "node-1", "restart", headers: DemoProcess.controlHeaders + ["Host: localhost:\(port)", "Origin: http://localhost:\(port)"])
        #expect(viaLocalhost.status == 200, "\(viaLocalhost.body)")
        #expect(demo.waitForNode("node-1", state: "running"))
    }

    @Test func refusesABadStrategyWithAClearMessage() throws {
        let process = try ChildProcess(try ChildProcess.sessionClusterBinary(), ["demo", "--strategy", "sticky", "--port", "0"])
        let status = process.stop(signal: 0, timeout: 10)
        #expect(status != nil && status != 0)
        #expect(process.output.contains("unknown strategy 'sticky'"), "\(process.output)")
    }
}

/// The `count` of a demo API answer.
func demoCount(_ answer: CurlClient.Response) throws -> Int {
    let object = try JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any]
    return try #require(object?["count"] as? Int, "\(answer.body)")
}

/// A running `session-cluster demo`; `stop()` sends SIGTERM and checks that it
/// exits 0 and that none of its children outlive it.
final class DemoProcess: @unchecked Sendable {  // used by one test at a time
    let process: ChildProcess
    let base: String
    private var stopped = false

    init(_ arguments: [String]) throws {
        let process = try ChildProcess(try ChildProcess.sessionClusterBinary(), ["demo", "--port", "0"] + arguments)
        self.process = process
        var found: String?
        let started = waitUntil(timeout: 60) {
            if let line = process.output.split(separator: "\n").first(where: { $0.contains("dashboard") }),
                let url = line.split(separator: " ").last
            {
                found = String(url.hasSuffix("/") ? url.dropLast() : url)
                return true
            }
            return !process.isRunning
        }
        guard started, let found else {
            let output = process.output
            process.stop(signal: SIGKILL)
            throw TestError("the demo did not start:\n\(output)")
        }
        base = found
    }

    var output: String { process.output }

    /// What a POST to the control API must carry (`ControlAPI.controlHeader`).
    static let controlHeaders = ["X-Cluster-Control: 1"]

    /// `POST /_cluster/nodes/NODE/ACTION` with `headers`.
    func control(_ node: String, _ action: String, headers: [String] = controlHeaders) throws -> CurlClient.Response {
        try CurlClient().request("POST", "\(base)/_cluster/nodes/\(node)/\(action)", headers: headers, useJar: false)
    }

    /// The node's entry in /_cluster/status.
    func node(_ name: String) -> [String: Any]? {
        guard let answer = try? CurlClient().request("GET", "\(base)/_cluster/status", useJar: false),
            let object = try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any],
            let nodes = object["nodes"] as? [[String: Any]]
        else { return nil }
        return nodes.first { $0["name"] as? String == name }
    }

    /// The node's state in /_cluster/status.
    func state(of node: String) -> String? { self.node(node)?["state"] as? String }

    func waitForNode(_ node: String, state wanted: String, timeout: Double = 20) -> Bool {
        waitUntil(timeout: timeout) { state(of: node) == wanted }
    }

    /// The demo's status JSON (`GET /_cluster/status`).
    func status() -> [String: Any]? {
        guard let answer = try? CurlClient().request("GET", "\(base)/_cluster/status", useJar: false) else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any]
    }

    /// The Redis node's entry in /_cluster/status (`redisNodes`).
    func redisNode(_ name: String) -> [String: Any]? {
        (status()?["redisNodes"] as? [[String: Any]])?.first { $0["name"] as? String == name }
    }

    /// SIGKILL, as when the user kills the demo outright: no cleanup of its own runs. Returns at once
    /// (a leftover child of the demo must make a test fail, not wait).
    func killOutright() {
        stopped = true
        kill(process.pid, SIGKILL)
    }

    /// SIGTERM; expects exit status 0 and every child it had gone.
    func stop() {
        guard !stopped else { return }
        stopped = true
        let children = ProcessTable.children(of: process.pid)
        #expect(!children.isEmpty, "the demo runs its nodes as child processes")
        let status = process.stop(signal: SIGTERM, timeout: 20)
        #expect(status == 0, "the demo exits 0 on SIGTERM:\n\(process.output)")
        for pid in children {
            let gone = waitUntil(timeout: 5) { kill(pid, 0) != 0 }
            #expect(gone, "child \(pid) outlived the demo")
            if !gone { kill(pid, SIGKILL) }
        }
    }

    deinit { stop() }
}
