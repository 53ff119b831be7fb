import Synchronization

/// Per-client-IP request rate limit settings.
public struct RateLimitConfiguration: Sendable, Equatable {
    /// Requests per second, sustained.
    public var ratePerSecond: Double
    /// Requests allowed at once after a quiet time.
    public var burst: Int

    public init(ratePerSecond: Double, burst: Int) {
        self.ratePerSecond = ratePerSecond
        self.burst = burst
    }

    func validate() throws(BalancerConfigurationError) {
        guard ratePerSecond >= 0.001, ratePerSecond <= 1e9, burst >= 1 else {
            throw BalancerConfigurationError("rate limit: rate must be 0.001...1e9 per second and burst ≥ 1")
        }
    }

    /// Whole seconds until a token is back, for Retry-After.
    var retryAfterSeconds: Int { max(1, Int((1 / ratePerSecond).rounded(.up))) }
}

/// One token bucket per client IP, shared by all loops.
final class RateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var last: Int64
    }

    let configuration: RateLimitConfiguration
    private let buckets = Mutex([String: Bucket]())
    /// Buckets kept before full ones are forgotten.
    private let pruneAbove = 10_000

    init(configuration: RateLimitConfiguration) {
        self.configuration = configuration
    }

    /// Takes a token for `ip`; false when its bucket is empty.
    func allow(_ ip: String, now: Int64) -> Bool {
        let rate = configuration.ratePerSecond / 1_000
        let burst = Double(configuration.burst)
        return buckets.withLock { buckets in
            if buckets.count > pruneAbove {
                buckets = buckets.filter { Double(now - $0.value.last) * rate + $0.value.tokens < burst }
            }
            var bucket = buckets[ip] ?? Bucket(tokens: burst, last: now)
            bucket.tokens = min(burst, bucket.tokens + Double(now - bucket.last) * rate)
            bucket.last = now
            let allowed = bucket.tokens >= 1
            if allowed { bucket.tokens -= 1 }
            buckets[ip] = bucket
            return allowed
        }
    }
}
