import Synchronization

/// Limits retries to a share of the traffic: a retry is allowed while the
/// retries of the sliding window stay below max(`minimum`, `ratio` × its requests),
/// so a failing cluster is not hit by a retry storm on top of its load.
final class RetryBudget: Sendable {
    private struct Bucket {
        var second: Int64 = -1
        var requests = 0
        var retries = 0
    }

    private let ratio: Double
    private let minimum: Int
    private let buckets: Mutex<[Bucket]>

    init(ratio: Double, minimum: Int, windowMillis: Int) {
        self.ratio = ratio
        self.minimum = minimum
        buckets = Mutex([Bucket](repeating: Bucket(), count: max(1, windowMillis / 1_000)))
    }

    func recordRequest(now: Int64) {
        buckets.withLock { $0[Self.current(&$0, now)].requests += 1 }
    }

    /// Takes one retry from the budget; false when it is spent.
    func tryRetry(now: Int64) -> Bool {
        buckets.withLock { buckets in
            let index = Self.current(&buckets, now)
            let second = now / 1_000
            var requests = 0
            var retries = 0
            for b in buckets where b.second > second - Int64(buckets.count) {
                requests += b.requests
                retries += b.retries
            }
            guard retries < max(minimum, Int(ratio * Double(requests))) else { return false }
            buckets[index].retries += 1
            return true
        }
    }

    /// The index of `now`'s second, its bucket emptied if it held an older second.
    private static func current(_ buckets: inout [Bucket], _ now: Int64) -> Int {
        let second = now / 1_000
        let index = Int(second % Int64(buckets.count))
        if buckets[index].second != second { buckets[index] = Bucket(second: second) }
        return index
    }
}
