import SystemSupport

/// A signing key was unusable.
public struct SigningKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "signing key error: \(message)" }
}

/// The session cookie's value: the ID alone, or `<id>.<HMAC-SHA256(id)>`
/// with signing keys. Transport-free: every adapter shares it.
///
/// Keys rotate: the first key signs, every key verifies, so a new key can be
/// put first while cookies signed with the old one stay valid until it is
/// dropped from the list.
public struct SessionCookieCodec: Sendable {
    /// The shortest accepted signing key (32 bytes are recommended).
    public static let minimumKeyBytes = 16

    /// The keys, the signing one first; empty for unsigned cookies.
    public let signingKeys: [[UInt8]]
    private let keys: [HMACKey]

    /// A codec with `signingKeys` (each at least 16 bytes; none for unsigned cookies).
    public init(signingKeys: [[UInt8]]) throws(SigningKeyError) {
        for (index, key) in signingKeys.enumerated() where key.count < Self.minimumKeyBytes {
            throw SigningKeyError(
                "signing key \(index + 1) has \(key.count) bytes; at least \(Self.minimumKeyBytes) are required (32 recommended)")
        }
        self.init(uncheckedKeys: signingKeys)
    }

    /// Unsigned cookies: the bare session ID.
    public static let unsigned = SessionCookieCodec(uncheckedKeys: [])

    private init(uncheckedKeys: [[UInt8]]) {
        signingKeys = uncheckedKeys
        keys = uncheckedKeys.map(HMACKey.init)
    }

    /// Whether cookies are signed.
    public var isSigning: Bool { !signingKeys.isEmpty }

    /// The cookie value for an ID: the ID, plus its HMAC with the first key when signing.
    public func value(for id: SessionID) -> String {
        guard let key = keys.first else { return id.rawValue }
        return id.rawValue + "." + base64URLEncode(key.authenticationCode(for: Array(id.rawValue.utf8)))
    }

    /// The ID in a cookie value, or nil when malformed or signed by none of the keys.
    public func verifiedID(_ value: String) -> SessionID? {
        guard isSigning else { return SessionID(rawValue: value) }
        let parts = value.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let id = SessionID(rawValue: String(parts[0])),
            let mac = base64URLDecode(String(parts[1])), mac.count == 32
        else { return nil }
        let message = Array(id.rawValue.utf8)
        return keys.contains { $0.isValid(mac, for: message) } ? id : nil
    }
}
