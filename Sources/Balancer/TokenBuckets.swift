/// The token buckets of a rate limiter, one per client, at most `capacity` of them.
///
/// The keys wait in a queue, in the order they were last looked at. Every
/// `take` looks at a few from its front: a bucket that refilled is forgotten
/// (a new one would be the same), the others go to the back. Pruning thus
/// costs the same small amount per call, whatever the number of clients.
/// When all `capacity` buckets are in use, the one at the front of the queue
/// is forgotten to make room (its client starts again with a full bucket).
struct TokenBuckets {
    private struct Bucket {
        var tokens: Double
        /// Monotonic ms of the last refill.
        var last: Int64
    }

    /// Keys looked at by pruning per call: more than one, so forgetting outpaces new clients.
    static let prunedPerCall = 2

    let capacity: Int
    private let ratePerMillisecond: Double
    private let burst: Double
    private var buckets: [RateLimitKey: Bucket] = [:]
    /// Every key of `buckets` once, from `front` on; what is before `front` is spent.
    private var queue: [RateLimitKey] = []
    private var front = 0

    init(ratePerSecond: Double, burst: Int, capacity: Int) {
        precondition(capacity >= 1, "a rate limiter keeps at least one bucket")
        self.capacity = capacity
        ratePerMillisecond = ratePerSecond / 1_000
        self.burst = Double(burst)
    }

    /// Clients with a bucket now.
    var count: Int { buckets.count }

    /// Takes a token from `key`'s bucket; false when it is empty.
    mutating func take(_ key: RateLimitKey, now: Int64) -> Bool {
        pruneSome(now: now)
        var bucket: Bucket
        if let existing = buckets[key] {
            bucket = existing
            bucket.tokens = min(burst, bucket.tokens + Double(now - bucket.last) * ratePerMillisecond)
        } else {
            if buckets.count >= capacity, let oldest = popFront() { buckets[oldest] = nil }
            bucket = Bucket(tokens: burst, last: now)
            queue.append(key)
        }
        bucket.last = now
        let allowed = bucket.tokens >= 1
        if allowed { bucket.tokens -= 1 }
        buckets[key] = bucket
        return allowed
    }

    /// Looks at a few keys from the front of the queue: forgets the buckets that refilled.
    private mutating func pruneSome(now: Int64) {
        for _ in 0..<Self.prunedPerCall {
            guard let key = popFront() else { return }
            if let bucket = buckets[key], bucket.tokens + Double(now - bucket.last) * ratePerMillisecond < burst {
                queue.append(key)
            } else {
                buckets[key] = nil
            }
        }
    }

    private mutating func popFront() -> RateLimitKey? {
        guard front < queue.count else { return nil }
        let key = queue[front]
        front += 1
        if front > 1024 && front * 2 > queue.count {
            queue.removeFirst(front)
            front = 0
        }
        return key
    }
}
