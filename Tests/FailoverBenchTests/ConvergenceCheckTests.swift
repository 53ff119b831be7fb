import FailoverBench
import Logging
import MiniHTTP
import Synchronization
import SystemSupport
import Testing

/// A node of the convergence check's tests: answers `GET /api/session` with the count it holds
/// for the request's `sid`, and 500 when a read-token cookie (`sid_rt`) comes along; `/metrics`
/// with its count of concurrent sets overwritten, if given one.
private final class CountingNode: Sendable {
    private final class Counts: Sendable {
        let value: Mutex<[String: Int]>
        init(_ value: [String: Int]) { self.value = Mutex(value) }
    }

    private let counts: Counts
    private let server: HTTPServer

    init(_ counts: [String: Int], overwrittenSets: Int? = nil) throws {
        let held = Counts(counts)
        self.counts = held
        server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0, eventLoops: 1, handlerThreads: 2),
            logger: Logger(label: "node", factory: { _ in SwiftLogNoOpLogHandler() })
        ) { request in
            if request.path == "/metrics" {
                guard let overwrittenSets else { return HTTPResponse(status: 404) }
                return HTTPResponse(
                    status: 200, headers: ["Content-Type": "text/plain"],
                    body: Array("# TYPE x counter\nsession_replication_concurrent_sets_overwritten_total{node=\"n\"} \(overwrittenSets)\n".utf8))
            }
            if request.cookie("sid_rt") != nil { return HTTPResponse(status: 500) }
            guard let sid = request.cookie("sid"), let count = held.value.withLock({ $0[sid] }) else {
                return .json("{\"node\":\"n\",\"count\":0}")
            }
            return .json("{\"node\":\"n\",\"count\":\(count)}")
        }
        try server.start()
    }

    var port: Int { server.port }
    func set(_ sid: String, _ count: Int) { counts.value.withLock { $0[sid] = count } }
    func shutdown() { server.shutdown() }
}

@Suite(.timeLimit(.minutes(1)))
struct ConvergenceCheckTests {
    /// A user told `confirmed` counts in turn, then `unknown` failed writes.
    private func user(_ sid: String, confirmed: Int, unknown: Int = 0) -> ConvergenceCheck.UserSession {
        var checker = SessionChecker()
        for count in stride(from: 1, through: confirmed, by: 1) { _ = checker.checkWrite(count: count) }
        for _ in 0..<unknown { checker.writeFailed() }
        return ConvergenceCheck.UserSession(cookie: "sid=\(sid); sid_rt=token", checker: checker)
    }

    private func check(_ nodes: [CountingNode], _ users: [ConvergenceCheck.UserSession], deadlineMillis: Int = 300)
        throws -> ConvergenceResult
    {
        var check = ConvergenceCheck(
            nodes: nodes.enumerated().map { BenchNode(name: "n\($0.offset)", port: $0.element.port) },
            target: try BenchTarget(baseURL: "http://127.0.0.1:1"))
        check.deadlineMillis = deadlineMillis
        check.pollMillis = 10
        return check.run(users, loadEndedNanos: monotonicMillis() * 1_000_000)
    }

    @Test func nodesThatAgreeOnWhatUsersWereToldPass() throws {
        let nodes = try [
            CountingNode(["a": 3, "b": 5], overwrittenSets: 2), CountingNode(["a": 3, "b": 5], overwrittenSets: 1),
        ]
        defer { nodes.forEach { $0.shutdown() } }
        // b: 4 confirmed and one write of unknown outcome that was applied.
        let result = try check(nodes, [user("a", confirmed: 3), user("b", confirmed: 4, unknown: 1)])
        #expect(result.sessions == 2 && result.diverged == 0 && result.agreedAfterMillis != nil)
        #expect(result.missingIncrements == 0 && result.extraIncrements == 0)
        #expect(result.concurrentSetsOverwritten == 3, "summed over the nodes")
        #expect(result.summary.contains("3 concurrent sets overwritten"))
    }

    @Test func missingAndDoubledIncrementsAreCountedOnceTheNodesAgree() throws {
        let nodes = try [CountingNode(["a": 2, "b": 7]), CountingNode(["a": 2, "b": 7])]
        defer { nodes.forEach { $0.shutdown() } }
        let result = try check(nodes, [user("a", confirmed: 3), user("b", confirmed: 4, unknown: 1)])
        #expect(result.diverged == 0)
        #expect(result.sessionsMissingIncrements == 1 && result.missingIncrements == 1, "a: 3 confirmed, 2 held")
        #expect(result.sessionsWithExtraIncrements == 1 && result.extraIncrements == 2, "b: at most 5, 7 held")
    }

    @Test func nodesThatDisagreeAreReportedAndThoseThatCatchUpAreNot() throws {
        let nodes = try [CountingNode(["a": 3, "b": 1]), CountingNode(["a": 2, "b": 1])]
        defer { nodes.forEach { $0.shutdown() } }
        let diverged = try check(nodes, [user("a", confirmed: 3), user("b", confirmed: 1)])
        #expect(diverged.diverged == 1 && diverged.agreedAfterMillis == nil)
        #expect(diverged.concurrentSetsOverwritten == nil, "no node reports the metric")
        #expect(diverged.missingIncrements == 0, "a session the nodes disagree on is not judged")

        nodes[1].set("a", 3)  // the lagging node caught up
        let agreed = try check(nodes, [user("a", confirmed: 3), user("b", confirmed: 1)])
        #expect(agreed.diverged == 0 && agreed.agreedAfterMillis != nil)
    }
}
