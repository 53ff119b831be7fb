import SystemSupport

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
        SessionID(uncheckedRawValue: base64URLEncode(secureRandomBytes(32)))
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
        let random = base64URLEncode(secureRandomBytes(30))  // 240 bits: 40 characters
        return SessionID(uncheckedRawValue: slotTag + random)
    }

    /// Whether `text` has the shape of a slot tag: three base64url characters.
    public static func isSlotTag(_ text: String) -> Bool {
        text.utf8.count == slotTagLength && text.utf8.allSatisfy(isBase64URLByte)
    }

    private init(uncheckedRawValue: String) { rawValue = uncheckedRawValue }

    /// Only a prefix, so logs never carry a usable ID.
    public var description: String { String(rawValue.prefix(6)) + "…" }
}

@inline(__always) func isBase64URLByte(_ b: UInt8) -> Bool {
    (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || (b >= 48 && b <= 57) || b == 45 || b == 95
}
