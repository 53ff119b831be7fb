import Crypto

/// An HMAC-SHA256 key with its key schedule done once: each MAC starts from
/// a copy of the keyed state (swift-crypto's digests copy on write), which
/// costs about 40% of a MAC from the raw key. For the hot paths: signed
/// cookies, and the replicated store's read tokens.
public struct HMACKey: @unchecked Sendable {  // immutable; every use mutates its own copy (copy on write)
    private let keyed: HMAC<SHA256>

    public init(_ key: [UInt8]) {
        keyed = HMAC<SHA256>(key: SymmetricKey(data: key))
    }

    /// HMAC-SHA256 of `message`.
    public func authenticationCode(for message: [UInt8]) -> [UInt8] {
        var mac = keyed
        mac.update(data: message)
        return Array(mac.finalize())
    }

    /// Whether `code` is the MAC of `message`, or its first `code.count`
    /// bytes (at least 16), compared in constant time.
    public func isValid(_ code: [UInt8], for message: [UInt8]) -> Bool {
        guard code.count >= 16, code.count <= 32 else { return false }
        let expected = authenticationCode(for: message)
        var difference: UInt8 = 0
        for i in code.indices { difference |= code[i] ^ expected[i] }
        return difference == 0
    }
}
