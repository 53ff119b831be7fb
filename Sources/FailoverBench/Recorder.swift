import Histogram
import Synchronization

/// One completed attempt, as the load loops report it.
struct RecordedAnswer: Sendable {
    /// When it completed (monotonic nanoseconds).
    var atNanos: Int64
    var kind: AnswerKind
    /// For 2xx answers: the latency (see `LatencySummary`).
    var latencyMicros: UInt64?
    var node: String?
    /// For errors: the cause, e.g. `timeout` or `http 503`.
    var errorKind: String?
    var isRetry: Bool
}

/// Collects the answers of every load loop, bucketed by arrival time.
final class Recorder: Sendable {
    private struct Bucket: Sendable {
        var counts = OutcomeCounts()
        var nodes: [String: Int] = [:]
        var latency = Histogram<UInt32>(
            lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .two)
    }

    private struct State: Sendable {
        var buckets: [Bucket] = []
        var summary = RunSummary()
        var latency = StrategyResult.emptyHistogram()
        /// When errors and anomalies arrived, in ms since the start (equal neighbours collapsed).
        var issueMillis: [Int] = []
        var markers: [FaultMarker] = []
    }

    let startNanos: Int64
    let bucketMillis: Int
    private let state = Mutex(State())

    init(startNanos: Int64, bucketMillis: Int) {
        self.startNanos = startNanos
        self.bucketMillis = bucketMillis
    }

    /// Milliseconds since the start of the run.
    func offsetMillis(_ nanos: Int64) -> Int { Int(max(0, nanos - startNanos) / 1_000_000) }

    func record(_ answer: RecordedAnswer) {
        let millis = offsetMillis(answer.atNanos)
        let index = millis / bucketMillis
        state.withLock { s in
            while s.buckets.count <= index { s.buckets.append(Bucket()) }
            s.buckets[index].counts[answer.kind] += 1
            s.summary.counts[answer.kind] += 1
            if answer.isRetry { s.summary.retries += 1 }
            if let latency = answer.latencyMicros {
                let clamped = min(max(latency, 1), 60_000_000)
                _ = s.buckets[index].latency.record(clamped)
                _ = s.latency.record(clamped)
            }
            if let node = answer.node {
                s.buckets[index].nodes[node, default: 0] += 1
                s.summary.nodes[node, default: 0] += 1
            }
            if let errorKind = answer.errorKind { s.summary.errorKinds[errorKind, default: 0] += 1 }
            if answer.kind != .success && s.issueMillis.last != millis { s.issueMillis.append(millis) }
        }
    }

    /// A connection was established.
    func connectionOpened() { state.withLock { $0.summary.connections += 1 } }

    func requestFailed() { state.withLock { $0.summary.failedRequests += 1 } }

    /// A user's gap between 2xx answers (see `LongestGap`), ending at `endNanos`.
    func gap(user: Int, fromNanos: Int64, endNanos: Int64) {
        let millis = Double(endNanos - fromNanos) / 1e6
        state.withLock { s in
            if millis > s.summary.longestGap.millis {
                s.summary.longestGap = LongestGap(millis: millis, user: user, endedAtMillis: offsetMillis(endNanos))
            }
        }
    }

    func addMarker(_ marker: FaultMarker) { state.withLock { $0.markers.append(marker) } }

    /// Totals so far, for the progress line.
    var counts: OutcomeCounts { state.withLock { $0.summary.counts } }

    /// The run's results, for a run that lasted `durationNanos`.
    func finish(durationNanos: Int64) -> (summary: RunSummary, buckets: [TimelineBucket], markers: [FaultMarker],
        latency: Histogram<UInt64>)
    {
        let durationMillis = Int(durationNanos / 1_000_000)
        return state.withLock { s in
            let needed = (durationMillis + bucketMillis - 1) / bucketMillis
            while s.buckets.count < needed { s.buckets.append(Bucket()) }
            let buckets = s.buckets.enumerated().map { index, bucket in
                let start = index * bucketMillis
                return TimelineBucket(
                    startMillis: start, durationMillis: max(1, min(bucketMillis, durationMillis - start)),
                    counts: bucket.counts,
                    p99Millis: bucket.latency.totalCount > 0 ? Double(bucket.latency.valueAtPercentile(99)) / 1000 : nil,
                    nodes: bucket.nodes)
            }
            var summary = s.summary
            summary.seconds = Double(durationNanos) / 1e9
            summary.latency = LatencySummary(microseconds: s.latency)
            let markers = FailoverAnalysis.annotate(
                s.markers, buckets: buckets, issueMillis: s.issueMillis, bucketMillis: bucketMillis)
            return (summary, buckets, markers, s.latency)
        }
    }
}

/// How long a fault took to show and to heal, from the client's side.
public enum FailoverAnalysis {
    /// Time to detect: from the fault to the first error or anomaly at or
    /// after it and before the next fault (nil when none came: the fault
    /// stayed invisible to users, though it may show as a latency gap).
    /// `issueMillis` are the arrival times of errors and anomalies.
    public static func detectMillis(faultAtMillis: Int, nextFaultAtMillis: Int? = nil, issueMillis: [Int]) -> Int? {
        issueMillis.filter { $0 >= faultAtMillis && $0 < (nextFaultAtMillis ?? .max) }.min().map { $0 - faultAtMillis }
    }

    /// The pre-fault throughput: the median of 2xx answers per bucket over the
    /// full buckets that end before `faultAtMillis`, the first bucket left out
    /// (connections are still opening). Nil when there is no such bucket.
    public static func baseline(buckets: [TimelineBucket], before faultAtMillis: Int, bucketMillis: Int) -> Double? {
        let values = buckets.dropFirst()
            .filter { $0.durationMillis == bucketMillis && $0.startMillis + bucketMillis <= faultAtMillis }
            .map { Double($0.counts.answered) }.sorted()
        guard !values.isEmpty else { return nil }
        let mid = values.count / 2
        return values.count % 2 == 1 ? values[mid] : (values[mid - 1] + values[mid]) / 2
    }

    /// Time to recover: the window runs from the bucket holding the fault to
    /// the bucket before the next fault's (or to the last full bucket). A
    /// bucket is bad when it has errors, or fewer 2xx answers than 90 % of
    /// `baseline` (when known). Recovery is the start of the first bucket
    /// after the window's last bad bucket, minus the fault time (0 when no
    /// bucket was bad); nil when the window's last bucket is still bad, or
    /// the window is empty.
    public static func recoverMillis(
        faultAtMillis: Int, nextFaultAtMillis: Int?, buckets: [TimelineBucket], baseline: Double?, bucketMillis: Int
    ) -> Int? {
        let first = faultAtMillis / bucketMillis
        var end = buckets.count
        if let next = nextFaultAtMillis { end = min(end, next / bucketMillis) }
        while end > first, buckets[end - 1].durationMillis < bucketMillis { end -= 1 }
        guard end > first else { return nil }
        func bad(_ b: TimelineBucket) -> Bool {
            b.counts.errors > 0 || (baseline.map { Double(b.counts.answered) < 0.9 * $0 } ?? false)
        }
        guard let lastBad = (first..<end).last(where: { bad(buckets[$0]) }) else { return 0 }
        guard lastBad < end - 1 else { return nil }
        return max(0, (lastBad + 1) * bucketMillis - faultAtMillis)
    }

    /// The markers in time order with `detectMillis` and `recoverMillis` filled
    /// in, each looking up to the next fault; the baseline is taken before the first fault.
    public static func annotate(
        _ markers: [FaultMarker], buckets: [TimelineBucket], issueMillis: [Int], bucketMillis: Int
    ) -> [FaultMarker] {
        let sorted = markers.sorted { $0.atMillis < $1.atMillis }
        guard let firstFault = sorted.first?.atMillis else { return [] }
        let base = baseline(buckets: buckets, before: firstFault, bucketMillis: bucketMillis)
        return sorted.map { marker in
            var m = marker
            let next = sorted.first { $0.atMillis > m.atMillis }?.atMillis
            m.detectMillis = detectMillis(faultAtMillis: m.atMillis, nextFaultAtMillis: next, issueMillis: issueMillis)
            m.recoverMillis = recoverMillis(
                faultAtMillis: m.atMillis, nextFaultAtMillis: next, buckets: buckets, baseline: base,
                bucketMillis: bucketMillis)
            return m
        }
    }
}
