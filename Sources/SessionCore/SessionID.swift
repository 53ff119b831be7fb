/// A session identifier: 32 bytes from the system CSPRNG, base64url without padding (43 characters).
public struct SessionID: Hashable, Sendable, CustomStringConvertible {
    /// The 43-character text form, as sent in the cookie.
    public let rawValue: String

    /// Accepts only the exact shape this package issues.
    public init?(rawValue: String) {
        guard rawValue.utf8.count == 43, rawValue.utf8.allSatisfy(isBase64URLByte) else { return nil }
        self.rawValue = rawValue
    }

    /// A new random ID.
    public static func generate() -> SessionID {
        var rng = SystemRandomNumberGenerator()  // getrandom(2) on Linux: cryptographically secure
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in stride(from: 0, to: 32, by: 8) {
            let word = rng.next()
            for j in 0..<8 { bytes[i + j] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(j))) }
        }
        return SessionID(uncheckedRawValue: base64URLEncode(bytes))
    }

    private init(uncheckedRawValue: String) { rawValue = uncheckedRawValue }

    /// Only a prefix, so logs never carry a usable ID.
    public var description: String { String(rawValue.prefix(6)) + "…" }
}

@inline(__always) func isBase64URLByte(_ b: UInt8) -> Bool {
    (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || (b >= 48 && b <= 57) || b == 45 || b == 95
}

private let base64URLAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

/// Base64url without padding (RFC 4648 §5).
public func base64URLEncode(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count * 4 + 2) / 3)
    var i = 0
    while i + 2 < bytes.count {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        out.append(base64URLAlphabet[Int(n >> 18 & 63)])
        out.append(base64URLAlphabet[Int(n >> 12 & 63)])
        out.append(base64URLAlphabet[Int(n >> 6 & 63)])
        out.append(base64URLAlphabet[Int(n & 63)])
        i += 3
    }
    let rest = bytes.count - i
    if rest == 1 {
        let n = UInt32(bytes[i]) << 16
        out.append(base64URLAlphabet[Int(n >> 18 & 63)])
        out.append(base64URLAlphabet[Int(n >> 12 & 63)])
    } else if rest == 2 {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
        out.append(base64URLAlphabet[Int(n >> 18 & 63)])
        out.append(base64URLAlphabet[Int(n >> 12 & 63)])
        out.append(base64URLAlphabet[Int(n >> 6 & 63)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// Decodes base64url without padding; nil on any invalid character or length.
public func base64URLDecode(_ text: String) -> [UInt8]? {
    var values: [UInt32] = []
    values.reserveCapacity(text.utf8.count)
    for b in text.utf8 {
        switch b {
        case 65...90: values.append(UInt32(b - 65))
        case 97...122: values.append(UInt32(b - 71))
        case 48...57: values.append(UInt32(b + 4))
        case 45: values.append(62)
        case 95: values.append(63)
        default: return nil
        }
    }
    if values.count % 4 == 1 { return nil }
    var out: [UInt8] = []
    var i = 0
    while i + 3 < values.count {
        let n = values[i] << 18 | values[i + 1] << 12 | values[i + 2] << 6 | values[i + 3]
        out.append(UInt8(n >> 16 & 255))
        out.append(UInt8(n >> 8 & 255))
        out.append(UInt8(n & 255))
        i += 4
    }
    let rest = values.count - i
    if rest == 2 {
        let n = values[i] << 18 | values[i + 1] << 12
        out.append(UInt8(n >> 16 & 255))
    } else if rest == 3 {
        let n = values[i] << 18 | values[i + 1] << 12 | values[i + 2] << 6
        out.append(UInt8(n >> 16 & 255))
        out.append(UInt8(n >> 8 & 255))
    }
    return out
}
