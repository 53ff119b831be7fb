import Testing

@testable import Balancer

@Suite("Balancer: rate limiter buckets")
struct RateLimiterTests {
    /// One request at once, then one per 1000 s: a second request in the same bucket is refused.
    static let strict = RateLimitConfiguration(ratePerSecond: 0.001, burst: 1)

    @Test func ipv6AddressesOfOneSlash64ShareABucket() {
        let limiter = RateLimiter(configuration: Self.strict)
        #expect(limiter.allow("2001:db8:1:2::1", now: 0))
        #expect(!limiter.allow("2001:db8:1:2:ffff:ffff:ffff:fffe", now: 0), "same /64, another address")
        #expect(!limiter.allow("2001:0db8:0001:0002:0000:0000:0000:0009", now: 0), "same /64, written in full")
        #expect(limiter.allow("2001:db8:1:3::1", now: 0), "the next /64 has its own bucket")
        #expect(limiter.allow("2001:db8:2:2::1", now: 0), "so has another /48")
        #expect(limiter.trackedClients == 3)
    }

    @Test func ipv4AddressesHaveOneBucketEach() {
        let limiter = RateLimiter(configuration: Self.strict)
        #expect(limiter.allow("192.0.2.7", now: 0))
        #expect(!limiter.allow("192.0.2.7", now: 0))
        #expect(limiter.allow("192.0.2.8", now: 0), "a neighbour address is another client")
    }

    @Test func ipv4MappedAddressesShareTheIPv4Bucket() {
        let limiter = RateLimiter(configuration: Self.strict)
        #expect(limiter.allow("192.0.2.7", now: 0))
        #expect(!limiter.allow("::ffff:192.0.2.7", now: 0))
        #expect(!limiter.allow("::FFFF:c000:207", now: 0), "the same address in hex")
        #expect(limiter.allow("::ffff:192.0.2.9", now: 0))
        #expect(limiter.trackedClients == 2)
    }

    @Test func keysOfAddresses() {
        #expect(RateLimitKey(address: "10.1.2.3") == .ipv4(0x0A01_0203))
        #expect(RateLimitKey(address: "::ffff:10.1.2.3") == .ipv4(0x0A01_0203))
        #expect(RateLimitKey(address: "2001:db8:aa:bb:1:2:3:4") == .ipv6Prefix(0x2001_0db8_00aa_00bb))
        #expect(RateLimitKey(address: "::1") == .ipv6Prefix(0))
        #expect(RateLimitKey(address: "::") == .ipv6Prefix(0))
        #expect(RateLimitKey(address: "unknown") == .other("unknown"))
        #expect(RateLimitKey(address: "10.1.2") == .other("10.1.2"), "no shorthand forms")
    }

    @Test func tokensRefillAtTheRate() {
        let limiter = RateLimiter(configuration: RateLimitConfiguration(ratePerSecond: 10, burst: 2))
        #expect(limiter.allow("192.0.2.1", now: 1_000))
        #expect(limiter.allow("192.0.2.1", now: 1_000))
        #expect(!limiter.allow("192.0.2.1", now: 1_050), "half a token back")
        #expect(limiter.allow("192.0.2.1", now: 1_100))
        #expect(!limiter.allow("192.0.2.1", now: 1_100))
    }

    /// 50 000 clients at once, none of whose buckets refill in the meantime: the table stays at its bound.
    @Test func manyClientsStayWithinTheBound() {
        let limiter = RateLimiter(
            configuration: RateLimitConfiguration(ratePerSecond: 0.001, burst: 5, maxTrackedClients: 10_000))
        var largest = 0
        for i in 0..<50_000 {
            _ = limiter.allow("2001:db8:\(String(i >> 16, radix: 16)):\(String(i & 0xFFFF, radix: 16))::1", now: 0)
            largest = max(largest, limiter.trackedClients)
        }
        #expect(largest == 10_000)
        #expect(limiter.trackedClients == 10_000)
        // The newest clients are the ones kept.
        for _ in 0..<4 { #expect(limiter.allow("2001:db8:0:c34f::1", now: 0)) }  // client 49_999
        #expect(!limiter.allow("2001:db8:0:c34f::1", now: 0))
    }

    /// Clients that come once and go: their buckets refill and are forgotten as others arrive,
    /// long before any bound is reached.
    @Test func idleClientsAreForgottenOnceTheirBucketRefilled() {
        let limiter = RateLimiter(configuration: RateLimitConfiguration(ratePerSecond: 1_000, burst: 1))
        var largest = 0
        for i in 0..<50_000 {
            _ = limiter.allow("10.\(i >> 16).\((i >> 8) & 0xFF).\(i & 0xFF)", now: Int64(i))  // 1 ms apart: 1 token back
            largest = max(largest, limiter.trackedClients)
        }
        #expect(largest <= 3)
    }

    /// Forgetting is for buckets a new one would equal: below the bound, a client that used
    /// its tokens is not forgotten however many others come by.
    @Test func aLimitedClientIsRememberedWhileOthersComeAndGo() {
        let limiter = RateLimiter(configuration: Self.strict)
        #expect(limiter.allow("198.51.100.1", now: 0))
        for i in 0..<20_000 {
            _ = limiter.allow("10.0.\(i >> 8).\(i & 0xFF)", now: 0)
        }
        #expect(!limiter.allow("198.51.100.1", now: 0))
        #expect(limiter.trackedClients == 20_001)
    }
}
