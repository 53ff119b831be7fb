/// `count` bytes from the system's secure generator (getrandom(2) on Linux):
/// for secrets, session IDs and tokens.
public func secureRandomBytes(_ count: Int) -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    var word: UInt64 = 0
    for i in 0..<count {
        if i % 8 == 0 { word = rng.next() }
        bytes[i] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(i % 8)))
    }
    return bytes
}

/// A random secret of `byteCount` bytes, as base64url text.
public func secureRandomToken(byteCount: Int) -> String {
    base64URLEncode(secureRandomBytes(byteCount))
}
