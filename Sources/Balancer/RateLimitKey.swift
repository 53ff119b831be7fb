#if canImport(Glibc)
import Glibc
#endif

/// Whose rate limit bucket a request counts against: an IPv4 address, or the
/// /64 prefix of an IPv6 address (one subnet, where a host may take any of its
/// 2^64 addresses, so rotating them does not get a fresh bucket each time).
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as its IPv4 address.
enum RateLimitKey: Hashable, Sendable {
    case ipv4(UInt32)
    /// The first 64 bits of the address.
    case ipv6Prefix(UInt64)
    /// Text that is no numeric address (a peer whose address could not be read): the text itself.
    case other(String)

    /// The key of a numeric address as `Sockets.peerAddress` gives it.
    init(address: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            self = .ipv4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, address, &v6) == 1 else {
            self = .other(address)
            return
        }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            self = .ipv4(bytes[12..<16].reduce(0) { $0 << 8 | UInt32($1) })
        } else {
            self = .ipv6Prefix(bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) })
        }
    }
}
