/// Each node's share of the 2xx answers once the cluster has settled after the
/// run's restarts: does round robin spread the load evenly again, or does a
/// node that came back stay under- (or over-) loaded?
///
/// The settle point is when the last restarted node served again, plus the
/// balancer's slow-start window (during which it gets less than its share on
/// purpose). A restarted node "served again" at the start of the first bucket
/// with a 2xx answer from it after a full bucket with none (it was gone); a node
/// that never missed a bucket served again at its restart. With several restarts
/// the latest of these counts. The window runs from the first bucket that
/// starts at or after the settle point to the end of the run, or to the first
/// other fault (kill, stop, resume) after the last restart.
///
/// Only restarts of nodes that answered during the run count (a restarted
/// redis-server is not a node); a run without one has no `SettledShare`.
public struct SettledShare: Sendable, Codable, Equatable {
    /// The restart the cluster settled from, e.g. `restart node-3`.
    public var lastRestart: String
    /// When that node served again, since the start of the run; nil when it did not.
    public var servedAgainMillis: Int?
    /// The balancer's slow-start window added to it.
    public var slowStartMillis: Int
    /// The window counted, since the start of the run (nil when there is none).
    public var fromMillis: Int?
    public var toMillis: Int?
    /// 2xx answers per node in the window (every node that answered during the run, 0 included).
    public var answers: [String: Int]
    /// Each node's share (0...1) of the window's 2xx answers.
    public var shares: [String: Double]
    /// The largest relative deviation from an even share over the n nodes,
    /// max |share − 1/n| / (1/n): 0 is perfectly even, 1 a node with nothing
    /// (or with twice its share). Nil when not measured: see `note`.
    public var maxDeviation: Double?
    /// Why there is no number (too little data after the settle point, a node that never came back...).
    public var note: String?

    public init(
        lastRestart: String, servedAgainMillis: Int?, slowStartMillis: Int, fromMillis: Int? = nil, toMillis: Int? = nil,
        answers: [String: Int] = [:], shares: [String: Double] = [:], maxDeviation: Double? = nil, note: String? = nil
    ) {
        self.lastRestart = lastRestart
        self.servedAgainMillis = servedAgainMillis
        self.slowStartMillis = slowStartMillis
        self.fromMillis = fromMillis
        self.toMillis = toMillis
        self.answers = answers
        self.shares = shares
        self.maxDeviation = maxDeviation
        self.note = note
    }

    /// The least data after the settle point for a share to be given.
    public static let minimumWindowMillis = 3_000

    /// The share of `nodes` (the nodes that answered during the run) in the window after the
    /// restarts among `markers`; nil when none of them restarted one of `nodes`.
    public static func compute(
        buckets: [TimelineBucket], markers: [FaultMarker], nodes: [String], bucketMillis: Int, runMillis: Int,
        slowStartMillis: Int, minimumWindowMillis: Int = SettledShare.minimumWindowMillis
    ) -> SettledShare? {
        let restarts = markers.filter { $0.action == .restart && nodes.contains($0.node) }
        guard !restarts.isEmpty, bucketMillis > 0 else { return nil }
        var latest: (marker: FaultMarker, millis: Int)?
        for restart in restarts {
            guard let back = servedAgain(restart, buckets: buckets, bucketMillis: bucketMillis) else {
                return SettledShare(
                    lastRestart: restart.label, servedAgainMillis: nil, slowStartMillis: slowStartMillis,
                    note: "\(restart.node) did not serve again after its restart at \(seconds(restart.atMillis))")
            }
            if latest == nil || back > latest!.millis || (back == latest!.millis && restart.atMillis > latest!.marker.atMillis) {
                latest = (restart, back)
            }
        }
        let (last, back) = latest!
        var share = SettledShare(lastRestart: last.label, servedAgainMillis: back, slowStartMillis: slowStartMillis)
        let settle = back + slowStartMillis
        let from = (settle + bucketMillis - 1) / bucketMillis * bucketMillis
        let lastRestartAt = restarts.map(\.atMillis).max()!
        let next = markers.filter { $0.action != .restart && $0.atMillis > lastRestartAt }.map(\.atMillis).min()
        let to = min(runMillis, next ?? runMillis)
        share.fromMillis = from
        share.toMillis = to
        let window = buckets.filter { $0.startMillis >= from && $0.startMillis + $0.durationMillis <= to }
        let dataMillis = window.reduce(0) { $0 + $1.durationMillis }
        guard dataMillis >= minimumWindowMillis else {
            share.note = "only \(seconds(dataMillis)) of data after the settle point at \(seconds(settle)) "
                + "(at least \(seconds(minimumWindowMillis)) needed)"
                + (next.map { $0 < runMillis ? "; the window ends at the next fault, at \(seconds($0))" : "" } ?? "")
            return share
        }
        var answers = Dictionary(uniqueKeysWithValues: nodes.map { ($0, 0) })
        for bucket in window {
            for (node, count) in bucket.nodes where answers[node] != nil { answers[node]! += count }
        }
        share.answers = answers
        let total = answers.values.reduce(0, +)
        guard total > 0 else {
            share.note = "no 2xx answers after the settle point at \(seconds(settle))"
            return share
        }
        let n = Double(nodes.count)
        share.shares = answers.mapValues { Double($0) / Double(total) }
        share.maxDeviation = share.shares.values.map { abs($0 * n - 1) }.max()
        return share
    }

    /// When the node of `restart` served again (see the type's documentation).
    static func servedAgain(_ restart: FaultMarker, buckets: [TimelineBucket], bucketMillis: Int) -> Int? {
        let first = restart.atMillis / bucketMillis
        guard first < buckets.count else { return nil }
        func served(_ index: Int) -> Bool { buckets[index].nodes[restart.node, default: 0] > 0 }
        // A short last bucket may hold no answer of the node by chance: only full buckets tell it was gone.
        guard let gone = (first..<buckets.count).first(where: { !served($0) && buckets[$0].durationMillis >= bucketMillis })
        else { return restart.atMillis }
        guard let back = (gone..<buckets.count).first(where: served) else { return nil }
        return buckets[back].startMillis
    }

    /// One line for the text report, e.g. `node-1 33.6%, node-2 32.9%, node-3 33.5%; at most 1.3% off an even
    /// share (27.0–40.0 s; restart node-3 served again at 26.75 s, slow start 0 s)`.
    public var summary: String {
        var settled = "\(lastRestart) served again "
            + (servedAgainMillis.map { "at \(seconds($0))" } ?? "never") + ", slow start \(seconds(slowStartMillis))"
        if let from = fromMillis, let to = toMillis { settled = "\(seconds(from))–\(seconds(to)); " + settled }
        guard let deviation = maxDeviation else { return "not measured: \(note ?? "no data") (\(settled))" }
        let parts = shares.sorted { $0.key < $1.key }.map { "\($0.key) \(fixed($0.value * 100, 1))%" }
        return parts.joined(separator: ", ") + "; at most \(fixed(deviation * 100, 1))% off an even share (\(settled))"
    }
}

/// `12.5 s`, `3 s`, `3.25 s` (to the hundredth, no trailing zeros: a run's end at 30,004 ms is `30 s`).
private func seconds(_ millis: Int) -> String {
    var text = fixed(Double(millis) / 1000, 2)
    while text.hasSuffix("0") { text.removeLast() }
    if text.hasSuffix(".") { text.removeLast() }
    return text + " s"
}
