import FailoverBench
import Foundation
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif

@Suite(.timeLimit(.minutes(1)))
struct ReportTests {
    /// Two real runs: a clean one, and one with anomalies, errors and a fault marker.
    private func twoStrategies() throws -> [StrategyResult] {
        let clean = try CounterServer()
        defer { clean.shutdown() }
        var first = try runBench(against: clean, users: 2, maxRequests: 60)
        first.name = "clean <one>"
        // The misbehaviours are armed early (request 4, 8, 12) and the kill, which ends every answer, comes
        // at 700 ms: a loaded machine still sends the few requests that fire them before it.
        let faulty = try CounterServer(Misbehavior(unavailableAt: [4], resetAt: [8], staleReadAt: [12]))
        defer { faulty.shutdown() }
        var second = try runBench(
            against: faulty, users: 2, maxRequests: nil, durationSeconds: 1.0, faults: try FaultPlan(parsing: ["kill:n2@700ms"]),
            injector: RecordingInjector(server: faulty))
        second.name = "faulty"
        return [first, second]
    }

    @Test func jsonAndHTMLAreWrittenAndWellFormed() throws {
        let strategies = try twoStrategies()
        let report = BenchReport(title: "Failover & co", command: "session-cluster bench --users 2", strategies: strategies)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-report-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let files = try report.write(to: directory)

        let decoded = try JSONDecoder().decode(BenchReport.self, from: Data(contentsOf: files.json))
        #expect(decoded.title == report.title && decoded.command == report.command)
        #expect(decoded.strategies.map(\.name) == ["clean <one>", "faulty"])
        for (a, b) in zip(decoded.strategies, strategies) {
            #expect(a.summary == b.summary)
            #expect(a.buckets == b.buckets)
            #expect(a.faults == b.faults)
            #expect(a.settings == b.settings)
        }
        #expect(decoded.strategies[1].faults.map(\.label) == ["kill n2"])
        #expect(decoded.strategies[1].summary.counts.lostSessions == 1)

        let html = try String(contentsOf: files.html, encoding: .utf8)
        #expect(html.hasPrefix("<!doctype html>"))
        #expect(html.components(separatedBy: "<svg").count - 1 == 2)
        #expect(html.components(separatedBy: "</svg>").count - 1 == 2)
        // Self-contained: nothing to fetch.
        for needle in ["<script", "<link", "src=", "@import", "url(", "https:"] { #expect(!html.contains(needle), "\(needle)") }
        // Names are escaped; each SVG parses as XML.
        #expect(html.contains("clean &lt;one&gt;") && !html.contains("clean <one>"))
        #expect(html.contains("Failover &amp; co"))
        for svg in svgs(in: html) {
            let parser = XMLParser(data: Data(svg.utf8))
            #expect(parser.parse(), "SVG is not well-formed: \(parser.parserError.map { "\($0)" } ?? "")")
        }
        // The fault is drawn as a labelled vertical line in the second chart only.
        let charts = svgs(in: html)
        #expect(!charts[0].contains("kill n2") && charts[1].contains(">kill n2</text>"))
        #expect(charts[1].contains("stroke-dasharray"))
    }

    @Test func theTableHasARowPerStrategyWithItsCounts() throws {
        let strategies = try twoStrategies()
        let table = BenchReport(strategies: strategies).table()
        let lines = table.split(separator: "\n")
        #expect(lines[0].hasPrefix("strategy"))
        for column in ["requests", "req/s", "errors", "lost sess", "lost upd", "dupl", "stale", "p50 ms", "p99 ms",
            "p99.9 ms", "max ms", "gap ms", "detect ms", "recover ms"]
        {
            #expect(lines[0].contains(column))
        }
        let faulty = try #require(lines.first { $0.hasPrefix("faulty") })
        let cells = faulty.split(separator: " ")
        let s = strategies[1].summary
        #expect(cells[1] == "\(s.counts.requests)")
        #expect(cells[3] == "\(s.counts.errors)" && cells[4] == "1" && cells[5] == "0" && cells[6] == "0" && cells[7] == "1")
        #expect(table.contains("faults (faulty): kill:n2@0.7s"))
    }

    /// A real run with a restart of one of the test server's nodes: the share of each node from then on.
    @Test func theShareAfterSettlingIsInTheTableTheHTMLAndTheJSON() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        var result = try runBench(
            against: server, users: 4, maxRequests: nil, durationSeconds: 4, pacing: .closedLoop(thinkTimeMillis: 5),
            faults: try FaultPlan(parsing: ["restart:node-a@500ms"]), injector: RecordingInjector(server: server),
            idempotencyKeys: false)
        result.name = "keyless"
        let share = try #require(result.settledShare)
        let restartAt = try #require(result.faults.first?.atMillis)
        // node-a never stopped answering: it served again at its restart.
        #expect(share.lastRestart == "restart node-a" && share.servedAgainMillis == restartAt)
        #expect(share.fromMillis == (restartAt + 249) / 250 * 250)
        #expect(Set(share.answers.keys) == ["node-a", "node-b"])
        // The window ends with the last whole bucket (the run's last one may be cut short).
        let to = try #require(share.toMillis)
        let window = result.buckets.filter { $0.startMillis >= share.fromMillis! && $0.startMillis + $0.durationMillis <= to }
        #expect(share.answers.values.reduce(0, +) == window.map(\.counts.answered).reduce(0, +))
        // The test server alternates the node with each user's count: about half each.
        let deviation = try #require(share.maxDeviation, "\(share)")
        #expect(deviation < 0.2, "\(share)")
        #expect(abs(share.shares.values.reduce(0, +) - 1) < 1e-9)

        let report = BenchReport(strategies: [result])
        let table = report.table()
        #expect(table.contains("share after settling (keyless): node-a "), "\(table)")
        #expect(table.contains("off an even share"))
        #expect(table.contains("writes (keyless): without Idempotency-Key, not retried"))
        let html = report.html()
        #expect(html.contains("Share of 2xx answers after settling: node-a "))
        #expect(html.contains("writes without Idempotency-Key"))
        let decoded = try JSONDecoder().decode(BenchReport.self, from: report.json())
        #expect(decoded.strategies[0].settledShare == share)
        #expect(decoded.strategies[0].settings.idempotencyKeys == false)
        #expect(decoded.strategies[0].settings.slowStartMillis == 0)
    }

    private func svgs(in html: String) -> [String] {
        html.components(separatedBy: "<svg").dropFirst().map { "<svg" + $0.components(separatedBy: "</svg>")[0] + "</svg>" }
    }
}
