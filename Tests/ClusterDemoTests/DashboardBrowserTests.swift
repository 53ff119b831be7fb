import Foundation
import Testing
import TestSupport
import SystemSupport

/// The dashboard in headless Chromium: the page each node serves at `/`,
/// driven through its DOM (element ids and data attributes documented in
/// Sources/ClusterDemo/DemoPage.swift).
///
/// Chromium is the apt package `chromium`: installed when missing, and the
/// tests are cancelled (shown as skipped, with the reason) only when that fails.
@Suite(.serialized, .tags(.integration)) struct DashboardBrowserTests {
    /// A browser, or the test is cancelled with the reason Chromium is unavailable.
    static func launchBrowser() throws -> Chromium {
        switch Chromium.ensureInstalled() {
        case .success(let path):
            return try Chromium(executable: path, windowSize: (1280, 1000))
        case .failure(let error):
            let reason = "SKIPPED browser test: \(error)"
            print(reason)
            try Test.cancel(Comment(rawValue: reason))
        }
    }

    /// The package root, from this file's path.
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The text of the element `selector` (querySelector), or nil when there is none.
    static func text(_ page: ChromiumPage, _ selector: String) throws -> String? {
        let literal = String(decoding: try JSONEncoder().encode(selector), as: UTF8.self)
        return try page.string("document.querySelector(\(literal))?.textContent.trim() ?? null")
    }

    /// Clicks the element with id `id`.
    static func click(_ page: ChromiumPage, _ id: String) throws {
        try page.evaluate("document.getElementById('\(id)').click()")
    }

    /// Types `name` into the login field (as the user would: an input event follows).
    static func typeName(_ page: ChromiumPage, _ name: String) throws {
        let literal = String(decoding: try JSONEncoder().encode(name), as: UTF8.self)
        try page.evaluate(
            "{ const n = document.getElementById('name'); n.value = \(literal); n.dispatchEvent(new Event('input')) }")
    }

    /// Waits until `#count` shows `count`; the failure says what it shows.
    static func expectCount(_ page: ChromiumPage, _ count: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let shown = try page.waitFor("document.getElementById('count').textContent === '\(count)'", timeout: 10)
        let (shows, status) = (try text(page, "#count") ?? "?", try text(page, "#status") ?? "")
        #expect(shown, "count \(count) expected; the page shows \(shows), status line: \(status)", sourceLocation: sourceLocation)
    }

    // MARK: One node, no supervisor

    @Test func sessionPanelOnOneNodeWithoutSupervisor() throws {
        let browser = try Self.launchBrowser()
        defer { browser.close() }
        let (node, port) = try ChildProcess.sessionClusterNode(id: "solo-1")  // healthy
        defer { node.stop(signal: SIGKILL, timeout: 2) }

        let page = try browser.open("http://127.0.0.1:\(port)/")
        #expect(try page.waitFor("document.getElementById('node').textContent === 'solo-1'"))

        // No supervisor here: /_cluster/status is a 404, so the panel hides itself.
        #expect(try page.waitFor("document.getElementById('cluster').hidden && !document.getElementById('cluster-note').hidden"))

        try Self.click(page, "inc")
        try Self.click(page, "inc")  // before the first answer set the cookie
        try Self.expectCount(page, 2)

        try Self.typeName(page, "ada")
        #expect(try Self.text(page, "#login") == "Log in as ada")
        try Self.click(page, "login")
        #expect(try page.waitFor("document.getElementById('user').textContent === 'ada'"))
        try Self.expectCount(page, 2)  // login keeps the count

        // An error answer: its message and status show, and the page goes on.
        try page.evaluate("document.getElementById('name').maxLength = 100")
        try Self.typeName(page, String(repeating: "y", count: 65))
        try Self.click(page, "login")
        #expect(try page.waitFor("document.getElementById('status').className === 'error'"))
        let status = try Self.text(page, "#status") ?? ""
        #expect(status.contains("400") && status.contains("1 to 64 bytes"), "status line: \(status)")

        try Self.click(page, "logout")
        try Self.expectCount(page, 0)
        #expect(try page.waitFor("document.getElementById('user').textContent === 'nobody'"))
        #expect(try page.evaluate("document.querySelectorAll('#log tr').length") as? Int ?? 0 >= 5, "the request log fills")
        browser.close()
        #expect(Chromium.processes(inGroup: browser.pid).isEmpty, "no chromium process outlives close()")
    }

    // MARK: The demo: three replicating nodes behind the balancer

    /// `session-cluster demo` with `arguments` on a free loopback port, and its address; the
    /// caller stops it with SIGTERM (SIGKILL would orphan its nodes).
    static func startDemo(_ arguments: [String]) throws -> (demo: ChildProcess, base: String) {
        let port = try Sockets.freeLoopbackPort()
        let demo = try ChildProcess(try ChildProcess.sessionClusterBinary(), ["demo"] + arguments + ["--port", "\(port)"])
        return (demo, "http://127.0.0.1:\(port)")
    }

    /// `GET /_cluster/status` as JSON, or nil.
    static func clusterStatus(_ client: CurlClient, _ base: String) -> [String: Any]? {
        guard let response = try? client.request("GET", "\(base)/_cluster/status", useJar: false), response.status == 200
        else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any]
    }

    @Test func dashboardShowsTheSessionSurvivingAKilledNode() throws {
        let browser = try Self.launchBrowser()
        defer { browser.close() }
        let (demo, base) = try Self.startDemo(["--strategy", "replicate", "--nodes", "3"])
        defer { demo.stop(signal: SIGTERM, timeout: 20) }  // SIGKILL would orphan its nodes
        let client = CurlClient()
        var nodeNames: [String] = []
        let up = waitUntil(timeout: 30) {
            guard demo.isRunning else { return true }
            guard let nodes = Self.clusterStatus(client, base)?["nodes"] as? [[String: Any]], nodes.count == 3 else { return false }
            nodeNames = nodes.compactMap { $0["name"] as? String }
            return nodes.allSatisfy { $0["state"] as? String == "running" && $0["health"] as? String == "up" }
        }
        try #require(up && demo.isRunning, "the demo's nodes did not all come up within 30 s; its output:\n\(demo.output)")
        let children = ProcessTable.children(of: demo.pid)
        #expect(children.count >= 3, "the demo runs its nodes as child processes: \(children)")

        let page = try browser.open("\(base)/")
        let cardsUp = nodeNames.map {
            "document.querySelector('[data-node=\"\($0)\"] [data-field=health]')?.textContent === 'up'"
        }
        #expect(
            try page.waitFor("!document.getElementById('cluster').hidden && " + cardsUp.joined(separator: " && ")),
            "the cluster panel shows the three nodes up")
        for name in nodeNames {
            #expect(try Self.text(page, "[data-node=\"\(name)\"] [data-field=state]") == "running")
            let resume = "document.querySelector('[data-node=\"\(name)\"] [data-action=resume]').disabled"
            #expect(try page.evaluate(resume) as? Bool == true, "Resume is disabled while \(name) runs")
        }

        // Two increments through the balancer: one session, whichever nodes answer.
        try Self.click(page, "inc")
        try Self.click(page, "inc")
        try Self.expectCount(page, 2)

        // Kill a node that did not answer last, with its button.
        let answered = try Self.text(page, "#node") ?? ""
        #expect(nodeNames.contains(answered), "#node names the node that answered: \(answered)")
        let victim = try #require(nodeNames.first { $0 != answered })
        let card = "document.querySelector('[data-node=\"\(victim)\"]')"
        #expect(try page.evaluate("\(card).querySelector('[data-action=kill]').disabled") as? Bool == false)
        try page.evaluate("\(card).querySelector('[data-action=kill]').click()")
        let downShown = try page.waitFor(
            "\(card).querySelector('[data-field=state]').textContent === 'dead' || "
                + "\(card).querySelector('[data-field=health]').textContent === 'down'", timeout: 15)
        let (victimState, statusLine) = (
            try Self.text(page, "[data-node=\"\(victim)\"] [data-field=state]") ?? "?", try Self.text(page, "#status") ?? ""
        )
        #expect(downShown, "\(victim) shows dead or down; it shows \(victimState), status line: \(statusLine)")
        #expect(try page.waitFor("\(card).querySelector('[data-action=restart]').disabled === false"), "a dead node can be restarted")

        // The session survives: the next increment answers 3.
        try Self.click(page, "inc")
        try Self.expectCount(page, 3)
        #expect(try Self.text(page, "#node") != victim)

        let screenshot = Self.packageRoot.appendingPathComponent(".build/dashboard-screenshot.png")
        try FileManager.default.createDirectory(
            at: screenshot.deletingLastPathComponent(), withIntermediateDirectories: true)
        try page.screenshot().write(to: screenshot)
        print("dashboard screenshot: \(screenshot.path)")

        // At phone width nothing overflows sideways.
        try page.setViewport(width: 360, height: 780, scale: 2, mobile: true)
        let fits = try page.waitFor("document.documentElement.scrollWidth <= window.innerWidth")
        let width = try page.string("document.documentElement.scrollWidth") ?? "?"
        #expect(fits, "the page fits 360 px; its scrollWidth is \(width)")
        try page.screenshot().write(
            to: screenshot.deletingLastPathComponent().appendingPathComponent("dashboard-screenshot-phone.png"))
        try page.setViewport(width: 1280, height: 1000)

        // Restart it from the dashboard: it comes back up.
        try page.evaluate("\(card).querySelector('[data-action=restart]').click()")
        #expect(
            try page.waitFor(
                "\(card).querySelector('[data-field=state]').textContent === 'running' && "
                    + "\(card).querySelector('[data-field=health]').textContent === 'up'", timeout: 30),
            "\(victim) restarts; the demo's output:\n\(demo.output)")
        browser.close()

        // SIGTERM stops the demo and everything it started.
        let before = ProcessTable.children(of: demo.pid)
        let status = demo.stop(signal: SIGTERM, timeout: 20)
        #expect(status == 0, "the demo exits 0 on SIGTERM; its output:\n\(demo.output)")
        let left = (children + before).filter { ProcessTable.isAlive($0) }
        #expect(left.isEmpty, "no child process of the demo outlives it: \(left)")
    }

    /// The Rolling restart button: the control API takes its request (so it carries the header the
    /// other buttons send), every node gets a new process in turn, the page follows it, the session survives.
    @Test func theRollingRestartButtonRestartsEveryNodeInTurn() throws {
        let browser = try Self.launchBrowser()
        defer { browser.close() }
        let (demo, base) = try Self.startDemo(["--strategy", "replicate", "--nodes", "3"])
        defer { demo.stop(signal: SIGTERM, timeout: 20) }  // SIGKILL would orphan its nodes
        let client = CurlClient()
        func pids() -> [String: Int] {
            let nodes = Self.clusterStatus(client, base)?["nodes"] as? [[String: Any]] ?? []
            var pids: [String: Int] = [:]
            for node in nodes where node["state"] as? String == "running" && node["health"] as? String == "up" {
                if let name = node["name"] as? String, let pid = node["pid"] as? Int { pids[name] = pid }
            }
            return pids
        }
        let up = waitUntil(timeout: 30) { !demo.isRunning || pids().count == 3 }
        try #require(up && demo.isRunning, "the demo's nodes did not all come up within 30 s; its output:\n\(demo.output)")
        let before = pids()

        let page = try browser.open("\(base)/")
        #expect(try page.waitFor("!document.getElementById('cluster').hidden && document.getElementById('rolling').disabled === false"))
        try Self.click(page, "inc")
        try Self.expectCount(page, 1)

        try Self.click(page, "rolling")
        let started = try page.waitFor("document.getElementById('status').textContent.startsWith('Rolling restart started')")
        let statusLine = try Self.text(page, "#status") ?? ""
        #expect(started, "status line: \(statusLine)")
        #expect(try Self.text(page, "#status") == "Rolling restart started: node-1, node-2, node-3")
        let done = try page.waitFor(
            "document.getElementById('rolling-status').textContent === 'Last rolling restart: done'", timeout: 90)
        let rollingLine = try Self.text(page, "#rolling-status") ?? ""
        #expect(done, "the page shows the end: \(rollingLine); the demo's output:\n\(demo.output)")
        #expect(try page.waitFor("document.getElementById('rolling').disabled === false"), "the button is enabled again")
        let after = pids()
        for (name, pid) in before { #expect(after[name] != nil && after[name] != pid, "\(name) runs a new process: \(after)") }
        #expect(demo.output.contains("rolling restart done"), "\(demo.output)")

        // The session lived through it.
        try Self.click(page, "inc")
        try Self.expectCount(page, 2)
    }

    /// Issue 17: the Cut off button partitions a node away; in sync mode the page shows which node
    /// reaches which and why the cut-off node refuses, the count goes on, and Heal partition ends it.
    @Test func theCutOffButtonPartitionsANodeAndHealEndsIt() throws {
        let browser = try Self.launchBrowser()
        defer { browser.close() }
        let (demo, base) = try Self.startDemo(["--strategy", "replicate", "--replication-mode", "sync", "--nodes", "3"])
        defer { demo.stop(signal: SIGTERM, timeout: 20) }
        let page = try browser.open("\(base)/")
        let card = "document.querySelector('[data-node=\"node-3\"]')"
        #expect(try page.waitFor("!document.getElementById('partition').hidden && \(card) !== null"
            + " && \(card).querySelector('[data-action=isolate]').disabled === false", timeout: 30))
        try Self.click(page, "inc")
        try Self.expectCount(page, 1)

        try page.evaluate("\(card).querySelector('[data-action=isolate]').click()")
        let reach = try page.waitFor("document.getElementById('reach').textContent.includes('node-3 → node-1 ✗')")
        #expect(reach, "\((try? Self.text(page, "#reach")) ?? nil ?? "")")
        #expect(try page.waitFor("document.getElementById('heal').disabled === false"))
        // Writes go on through the majority; the count never goes back.
        try Self.click(page, "inc")
        #expect(try page.waitFor("['2', '3'].includes(document.getElementById('count').textContent.trim())", timeout: 15))
        // Within a few seconds node-3 has tried a write or heard no one: it says why it refuses.
        let refusing = "\(card).querySelector('[data-field=refusing]')"
        _ = try? CurlClient().request("GET", "\(base)/api/session", useJar: false)
        let says = try page.waitFor("!\(refusing).hidden && \(refusing).textContent.includes('majority')", timeout: 20)
        #expect(says, "\((try? Self.text(page, "[data-node=\"node-3\"] [data-field=refusing]")) ?? nil ?? "")")

        try Self.click(page, "heal")
        #expect(try page.waitFor("document.getElementById('reach').textContent.startsWith('No partition')"))
        #expect(try page.waitFor("\(refusing).hidden", timeout: 30), "node-3 rejoined")
    }
}

extension DashboardBrowserTests {
    /// Attack: someone who reaches the demo's port (beyond loopback, or another user of the machine)
    /// kills its nodes. With a control token only its bearer can; the dashboard opened at the address
    /// the demo printed (`#token=`) sends it, and takes it out of the address bar.
    @Test func withAControlTokenOnlyItsBearerDrivesTheCluster() throws {
        let browser = try Self.launchBrowser()
        defer { browser.close() }
        let (demo, base) = try Self.startDemo(["--strategy", "local", "--nodes", "2", "--control-token"])
        defer { demo.stop(signal: SIGTERM, timeout: 20) }  // SIGKILL would orphan its nodes
        var address = ""
        let printed = waitUntil(timeout: 30) {
            guard demo.isRunning else { return true }
            guard let line = demo.output.split(separator: "\n").first(where: { $0.contains("dashboard") && $0.contains("#token=") })
            else { return false }
            address = String(line.split(separator: " ").last ?? "")
            return true
        }
        try #require(printed && demo.isRunning && address.hasPrefix("\(base)/#token="), "the demo's output:\n\(demo.output)")
        let token = String(address.dropFirst("\(base)/#token=".count))
        #expect(base64URLDecode(token)?.count == 16, "128 random bits: \(token)")

        let client = CurlClient()
        let anonymous = try client.request("GET", "\(base)/_cluster/status", useJar: false)
        #expect(anonymous.status == 401, "no token, no status")
        let kill = try client.request(
            "POST", "\(base)/_cluster/nodes/node-1/kill", headers: ["X-Cluster-Control: 1"], useJar: false)
        #expect(kill.status == 401, "the control header alone kills nothing")

        let page = try browser.open(address)
        #expect(
            try page.waitFor("!document.getElementById('cluster').hidden && document.querySelectorAll('[data-node]').length === 2"),
            "the page read the status with the token")
        #expect(try page.evaluate("location.hash") as? String == "", "the token left the address bar")
        try page.evaluate("document.querySelector('[data-node=\"node-1\"] [data-action=kill]').click()")
        let dead = try page.waitFor("document.querySelector('[data-node=\"node-1\"] [data-field=state]')?.textContent === 'dead'")
        #expect(dead, "the page's kill went through; the demo's output:\n\(demo.output)")
    }
}
