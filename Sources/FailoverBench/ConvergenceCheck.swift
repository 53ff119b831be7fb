import Foundation
import MiniHTTP
import SystemSupport

/// One node the convergence check reads from directly (not through the balancer).
public struct BenchNode: Sendable, Codable, Equatable {
    public var name: String
    public var port: Int
    public init(name: String, port: Int) {
        self.name = name
        self.port = port
    }
}

/// What the convergence check found after the load (`ConvergenceCheck`).
public struct ConvergenceResult: Sendable, Codable, Equatable {
    /// Sessions read: every user's whose session was never replaced during the run.
    public var sessions: Int
    /// Sessions the nodes still disagreed on at the deadline (a node that does not serve, e.g.
    /// one still rejoining, counts as disagreeing).
    public var diverged: Int
    /// Milliseconds from the end of the load to the start of the round of reads in which every
    /// node served the same count of every session (nil: not within the deadline).
    public var agreedAfterMillis: Int?
    /// Sessions whose agreed count is below the increments the server confirmed: acknowledged
    /// increments lost for good, and how many.
    public var sessionsMissingIncrements: Int
    public var missingIncrements: Int
    /// Sessions whose agreed count exceeds the confirmed increments plus the writes of unknown
    /// outcome: an increment applied twice, and how many extra.
    public var sessionsWithExtraIncrements: Int
    public var extraIncrements: Int
    /// Sets the nodes resolved against concurrent ones (last writer wins), summed over the nodes'
    /// `session_replication_concurrent_sets_overwritten_total`; nil when no node reports it.
    public var concurrentSetsOverwritten: Int?

    /// One line for the text report.
    public var summary: String {
        let agreed = agreedAfterMillis.map { "every node agreed on every session \($0) ms after the load" }
            ?? "\(diverged) of \(sessions) sessions still differed between nodes"
        return "\(agreed); \(missingIncrements) acknowledged increments missing (\(sessionsMissingIncrements) sessions), "
            + "\(extraIncrements) applied twice (\(sessionsWithExtraIncrements) sessions), \(sessions) sessions read"
            + (concurrentSetsOverwritten.map { "; \($0) concurrent sets overwritten (summed over the nodes)" } ?? "")
    }
}

/// After the load stops, reads every user's session from every node directly —
/// with the session cookie only, no read token, so each node answers with its
/// own copy — until all nodes agree on every session or the deadline passes.
/// Then it compares each agreed count with what the server told the user: no
/// acknowledged increment may be missing, none may count twice (`SessionChecker`'s
/// confirmed and unknown increments). This is what "converges" means for a
/// store that stayed available on both sides of a partition.
public struct ConvergenceCheck: Sendable {
    /// One user's session at the end of the load.
    public struct UserSession: Sendable {
        public var cookie: String
        public var checker: SessionChecker
        public init(cookie: String, checker: SessionChecker) {
            self.cookie = cookie
            self.checker = checker
        }
    }

    public var nodes: [BenchNode]
    public var target: BenchTarget
    /// Cookies whose name ends in this are not sent (read-your-writes tokens would make a node catch up).
    public var skippedCookieSuffix = "_rt"
    public var deadlineMillis = 10_000
    public var pollMillis = 50

    public init(nodes: [BenchNode], target: BenchTarget) {
        self.nodes = nodes
        self.target = target
    }

    public func run(_ sessions: [UserSession], loadEndedNanos: Int64) -> ConvergenceResult {
        var counts: [[Int?]] = []
        var agreedAt: Int64?
        let deadline = loadEndedNanos + Int64(deadlineMillis) * 1_000_000
        while true {
            let round = Int64(monotonicNanos())
            counts = sessions.map { session in nodes.map { read(cookie(session.cookie), from: $0) } }
            if counts.allSatisfy(Self.agree) {
                agreedAt = round  // the round that found them agreeing began then
                break
            }
            if Int64(monotonicNanos()) >= deadline { break }
            usleep(UInt32(pollMillis) * 1_000)
        }
        var result = ConvergenceResult(
            sessions: sessions.count, diverged: counts.filter { !Self.agree($0) }.count,
            agreedAfterMillis: agreedAt.map { Int(max(0, $0 - loadEndedNanos) / 1_000_000) },
            sessionsMissingIncrements: 0, missingIncrements: 0, sessionsWithExtraIncrements: 0, extraIncrements: 0)
        result.concurrentSetsOverwritten = overwrittenSets()
        for (session, seen) in zip(sessions, counts) where Self.agree(seen) {
            let count = seen.first.flatMap { $0 } ?? 0
            let confirmed = session.checker.confirmedIncrements
            let most = confirmed + session.checker.unknownIncrements
            if count < confirmed {
                result.sessionsMissingIncrements += 1
                result.missingIncrements += confirmed - count
            } else if count > most {
                result.sessionsWithExtraIncrements += 1
                result.extraIncrements += count - most
            }
        }
        return result
    }

    static let overwrittenSetsMetric = "session_replication_concurrent_sets_overwritten_total"

    /// The sum of every node's count of concurrent sets overwritten (nil when none reports one).
    private func overwrittenSets() -> Int? {
        let counts = nodes.compactMap { node -> Int? in
            guard let answer = BlockingGET.fetch(
                host: "127.0.0.1", port: node.port, path: "/metrics", timeoutMillis: 1_000, userAgent: "session-cluster-bench"),
                answer.status == 200
            else { return nil }
            return PrometheusText.sample(Self.overwrittenSetsMetric, in: String(decoding: answer.body, as: UTF8.self))
        }
        return counts.isEmpty ? nil : counts.reduce(0, +)
    }

    /// Every node served a count, the same one.
    static func agree(_ counts: [Int?]) -> Bool {
        guard let first = counts.first, let value = first else { return false }
        return counts.allSatisfy { $0 == value }
    }

    /// The count node `node` holds for the session (0 when it has none); nil when it does not answer 2xx.
    private func read(_ cookie: String, from node: BenchNode) -> Int? {
        guard let answer = BlockingGET.fetch(
            host: "127.0.0.1", port: node.port, path: target.basePath + target.read.path, timeoutMillis: 1_000,
            userAgent: "session-cluster-bench", headers: [("Cookie", cookie)]),
            (200..<300).contains(answer.status)
        else { return nil }
        let json = try? JSONSerialization.jsonObject(with: Data(answer.body), options: [.fragmentsAllowed])
        return json.flatMap { LoadLoop.lookup(target.countField, in: $0) }.flatMap(LoadLoop.integer) ?? 0
    }

    /// The session cookie of a user's `Cookie` header, without read tokens.
    func cookie(_ header: String) -> String {
        header.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !($0.split(separator: "=").first.map { $0.hasSuffix(skippedCookieSuffix) } ?? false) }
            .joined(separator: "; ")
    }
}
