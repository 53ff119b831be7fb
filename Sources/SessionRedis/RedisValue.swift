/// A Redis reply (RESP2).
public enum RedisValue: Sendable, Equatable, CustomStringConvertible {
    /// A bulk string: binary-safe bytes.
    case bulk([UInt8])
    /// A simple status such as "OK".
    case status(String)
    case integer(Int64)
    case array([RedisValue])
    case null
    /// An error reply, with Redis's own message (e.g. "NOSCRIPT No matching script").
    case error(String)

    /// The bytes of a bulk or status reply.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let b): b
        case .status(let s): Array(s.utf8)
        default: nil
        }
    }

    /// The text of a bulk or status reply.
    public var string: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }

    /// An integer reply, or a bulk string holding a decimal integer.
    public var int: Int64? {
        switch self {
        case .integer(let n): n
        case .bulk(let b): Int64(String(decoding: b, as: UTF8.self))
        default: nil
        }
    }

    public var array: [RedisValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var isNull: Bool { self == .null }

    public var description: String {
        switch self {
        case .bulk(let b): "\"" + String(decoding: b.prefix(200), as: UTF8.self) + (b.count > 200 ? "…" : "") + "\""
        case .status(let s): s
        case .integer(let n): "(integer) \(n)"
        case .array(let a): "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .null: "(nil)"
        case .error(let e): "(error) \(e)"
        }
    }
}

/// A failure talking to Redis.
public struct RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// Redis could not be reached, or the connection broke; the connection was dropped.
        case connection
        /// No reply within the command timeout; the connection was dropped.
        case timeout
        /// Redis answered with an error reply; the message is Redis's own.
        case server
        /// Every pooled connection stayed busy for the whole command timeout.
        case poolExhausted
        /// A bad URL or configuration.
        case configuration
        /// A reply of an unexpected shape.
        case protocolViolation
        /// A write reached the primary, but fewer replicas than `waitReplicas` acknowledged it in time.
        case notReplicated
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "redis \(code.rawValue): \(message)" }

}

/// Something that can be a command argument: sent as its bytes.
public protocol RedisArgument {
    var redisBytes: [UInt8] { get }
}

extension String: RedisArgument {
    public var redisBytes: [UInt8] { Array(utf8) }
}

extension Substring: RedisArgument {
    public var redisBytes: [UInt8] { Array(utf8) }
}

extension Array: RedisArgument where Element == UInt8 {
    public var redisBytes: [UInt8] { self }
}

extension Int: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}

extension Int64: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}

extension UInt64: RedisArgument {
    public var redisBytes: [UInt8] { Array(String(self).utf8) }
}
