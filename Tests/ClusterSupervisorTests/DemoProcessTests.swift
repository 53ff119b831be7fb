import Foundation
import TestSupport
import Testing

/// `session-cluster demo` as a user runs it: one process that starts the nodes,
/// the balancer and (for redis) its own redis-server; driven through the balancer
/// with a cookie-carrying client, a node killed through the control API.
@Suite("Demo process: sessions across a killed node, per strategy", .serialized)
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
            counts.append(try count(answer))
            servedBy += answer.header("X-Served-By")
        }
        #expect(Set(servedBy) == ["node-1", "node-2", "node-3"], "round robin reaches every node")

        let victim = try #require(servedBy.last)
        let killed = try client.request("POST", "\(demo.base)/_cluster/nodes/\(victim)/kill", useJar: false)
        #expect(killed.status == 200, "\(killed.body)")
        #expect(killed.body.contains("\"dead\""), "\(killed.body)")
        #expect(demo.waitForNode(victim, state: "dead"))

        for _ in 0..<6 {
            let answer = try client.request("POST", "\(demo.base)/api/counter")
            #expect(answer.status == 200, "no client-visible error after the kill: \(answer.body)")
            counts.append(try count(answer))
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

        let restarted = try client.request("POST", "\(demo.base)/_cluster/nodes/\(victim)/restart", useJar: false)
        #expect(restarted.status == 200, "\(restarted.body)")
        #expect(demo.waitForNode(victim, state: "running"))
        #expect(demo.output.contains("\(victim) killed by SIGKILL"), "the supervisor reports the death:\n\(demo.output)")
    }

    @Test func controlAPIRejectsWhatDoesNotFit() throws {
        let demo = try DemoProcess(["--strategy", "local", "--nodes", "2"])
        defer { demo.stop() }
        let client = CurlClient()
        let base = "\(demo.base)/_cluster/nodes"
        #expect(try client.request("POST", "\(base)/node-9/kill", useJar: false).status == 404)
        #expect(try client.request("POST", "\(base)/node-1/explode", useJar: false).status == 404)
        #expect(try client.request("GET", "\(base)/node-1/kill", useJar: false).status == 405)
        #expect(try client.request("POST", "\(base)/node-1/resume", useJar: false).status == 409, "not stopped")
        #expect(try client.request("POST", "\(base)/node-1/stop", useJar: false).status == 200)
        #expect(demo.waitForNode("node-1", state: "stopped"))
        #expect(try client.request("POST", "\(base)/node-1/stop", useJar: false).status == 409, "already stopped")
        // While node-1 is frozen, GETs still get answers (timeouts and health checks move them on).
        let answer = try client.request("GET", "\(demo.base)/api/session")
        #expect(answer.status == 200 || answer.status == 504, "\(answer.body)")
        #expect(try client.request("POST", "\(base)/node-1/resume", useJar: false).status == 200)
        #expect(demo.waitForNode("node-1", state: "running"))
        #expect(try client.request("POST", "\(base)/node-2/kill", useJar: false).status == 200)
        #expect(demo.waitForNode("node-2", state: "dead"))
        #expect(try client.request("POST", "\(base)/node-2/kill", useJar: false).status == 409, "already dead")
    }

    @Test func refusesABadStrategyWithAClearMessage() throws {
        let process = try ChildProcess(try ChildProcess.sessionClusterBinary(), ["demo", "--strategy", "sticky", "--port", "0"])
        let status = process.stop(signal: 0, timeout: 10)
        #expect(status != nil && status != 0)
        #expect(process.output.contains("unknown strategy 'sticky'"), "\(process.output)")
    }

    private func count(_ answer: CurlClient.Response) throws -> Int {
        let object = try JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any]
        return try #require(object?["count"] as? Int, "\(answer.body)")
    }
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
            return !process.process.isRunning
        }
        guard started, let found else {
            let output = process.output
            process.stop(signal: SIGKILL)
            throw ChildProcessError(message: "the demo did not start:\n\(output)")
        }
        base = found
    }

    var output: String { process.output }

    /// The node's state in /_cluster/status.
    func state(of node: String) -> String? {
        guard let answer = try? CurlClient().request("GET", "\(base)/_cluster/status", useJar: false),
            let object = try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any],
            let nodes = object["nodes"] as? [[String: Any]]
        else { return nil }
        return nodes.first { $0["name"] as? String == node }?["state"] as? String
    }

    func waitForNode(_ node: String, state wanted: String, timeout: Double = 20) -> Bool {
        waitUntil(timeout: timeout) { state(of: node) == wanted }
    }

    /// SIGTERM; expects exit status 0 and every child it had gone.
    func stop() {
        guard !stopped else { return }
        stopped = true
        let children = childPIDs(of: process.pid)
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

/// PIDs whose parent is `parent` (from /proc).
func childPIDs(of parent: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == parent
    }
}
