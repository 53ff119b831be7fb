import Crypto

/// A Lua script run with EVALSHA (and loaded by EVAL on NOSCRIPT).
public struct RedisScript: Sendable {
    public let name: String
    public let source: String
    /// The SHA-1 of the source, as Redis names scripts.
    public let sha1: String

    public init(name: String, source: String) {
        self.name = name
        self.source = source
        sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}
