#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
        self.signingKeys = signingKeys
        keys = signingKeys.map(HMACKey.init)
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

/// Secrets from the environment, so they never show in `ps`: `NAME` holds one
/// secret; `NAME_FILE` names a file with one secret per line (the first is the
/// current one; the others are older ones still accepted, for rotation).
public enum SecretFromEnvironment {
    /// The secrets of `name`, or nil when neither `name` nor `name_FILE` is set.
    /// Throws when both are set, the file cannot be read, or it holds no secret.
    public static func secrets(_ name: String) throws(SigningKeyError) -> [[UInt8]]? {
        let direct = getenv(name).map { String(cString: $0) }
        let path = getenv(name + "_FILE").map { String(cString: $0) }
        switch (direct, path) {
        case (nil, nil):
            return nil
        case (let value?, nil):
            return [Array(value.utf8)]
        case (nil, let path?):
            guard let text = readSmallFile(path) else {
                throw SigningKeyError("\(name)_FILE: cannot read \(path): \(String(cString: strerror(errno)))")
            }
            let lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map { Array($0.utf8) }
            guard !lines.isEmpty else { throw SigningKeyError("\(name)_FILE: \(path) holds no secret") }
            return lines
        case (_?, _?):
            throw SigningKeyError("both \(name) and \(name)_FILE are set; set one")
        }
    }

    private static func readSmallFile(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 1 << 20 {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
