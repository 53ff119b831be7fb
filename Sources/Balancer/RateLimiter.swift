import Synchronization

/// Per-client request rate limit settings (a client: an IPv4 address, or an IPv6 /64).
public struct RateLimitConfiguration: Sendable, Equatable {
    /// Requests per second, sustained.
    public var ratePerSecond: Double
    /// Requests allowed at once after a quiet time.
    public var burst: Int
    /// Clients whose buckets are kept at most (memory stays bounded whatever the number of
    /// addresses); beyond, the client looked at least recently is forgotten and starts again
    /// with a full bucket. Idle clients whose bucket refilled are forgotten anyway.
    public var maxTrackedClients: Int

    public init(ratePerSecond: Double, burst: Int, maxTrackedClients: Int = 100_000) {
        self.ratePerSecond = ratePerSecond
        self.burst = burst
        self.maxTrackedClients = maxTrackedClients
    }

    func validate() throws(BalancerConfigurationError) {
        guard ratePerSecond >= 0.001, ratePerSecond <= 1e9, burst >= 1 else {
            throw BalancerConfigurationError("rate limit: rate must be 0.001...1e9 per second and burst ≥ 1")
        }
        guard maxTrackedClients >= 1 else {
            throw BalancerConfigurationError("rate limit: maxTrackedClients must be ≥ 1")
        }
    }

    /// Whole seconds until a token is back, for Retry-After.
    var retryAfterSeconds: Int { max(1, Int((1 / ratePerSecond).rounded(.up))) }
}

/// One token bucket per client (IPv4 address or IPv6 /64, see `RateLimitKey`), shared by all loops.
final class RateLimiter: Sendable {
    let configuration: RateLimitConfiguration
    private let buckets: Mutex<TokenBuckets>

    init(configuration: RateLimitConfiguration) {
        self.configuration = configuration
        buckets = Mutex(
            TokenBuckets(
                ratePerSecond: configuration.ratePerSecond, burst: configuration.burst,
                capacity: configuration.maxTrackedClients))
    }

    /// Takes a token for `client`; false when its bucket is empty.
    func allow(_ client: RateLimitKey, now: Int64) -> Bool {
        buckets.withLock { $0.take(client, now: now) }
    }

    /// Takes a token for the client at `address` (numeric); false when its bucket is empty.
    func allow(_ address: String, now: Int64) -> Bool {
        allow(RateLimitKey(address: address), now: now)
    }

    /// Clients with a bucket now (at most `configuration.maxTrackedClients`).
    var trackedClients: Int { buckets.withLock { $0.count } }
}
