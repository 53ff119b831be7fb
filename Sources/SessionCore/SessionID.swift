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
        SessionID(uncheckedRawValue: base64URLEncode(randomBytes(32)))
    }

    /// How many leading characters form the slot tag.
    public static let slotTagLength = 3

    /// The first three characters: where a sharded store keeps the session
    /// (a Redis Cluster hash tag). A new ID made at regeneration, or for a
    /// request whose idempotency record already has a place, keeps the tag,
    /// so the session, its record and its lock stay in one slot. 18 bits of
    /// 64³ = 262,144 tags, spread evenly over Redis's 16,384 slots.
    public var slotTag: String { String(rawValue.prefix(Self.slotTagLength)) }

    /// A new random ID with `slotTag` as its first three characters (any
    /// three base64url characters; otherwise a random one). The 40 other
    /// characters are 240 fresh random bits: an attacker who knows the old
    /// ID (session fixation) knows only the tag of the new one.
    public static func generate(slotTag: String?) -> SessionID {
        guard let slotTag, isSlotTag(slotTag) else { return generate() }
        let random = base64URLEncode(randomBytes(30))  // 240 bits: 40 characters
        return SessionID(uncheckedRawValue: slotTag + random)
    }

    /// Whether `text` has the shape of a slot tag: three base64url characters.
    public static func isSlotTag(_ text: String) -> Bool {
        text.utf8.count == slotTagLength && text.utf8.allSatisfy(isBase64URLByte)
    }

    private static func randomBytes(_ count: Int) -> [UInt8] {
        var rng = SystemRandomNumberGenerator()  // getrandom(2) on Linux: cryptographically secure
        var bytes = [UInt8](repeating: 0, count: count)
        var word: UInt64 = 0
        for i in 0..<count {
            if i % 8 == 0 { word = rng.next() }
            bytes[i] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(i % 8)))
        }
        return bytes
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
