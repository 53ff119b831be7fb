/// Why bytes from a peer could not be decoded. The connection is closed; nothing is applied.
package struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "replication wire error: \(reason)" }
}

/// Appends big-endian integers and length-prefixed bytes.
package struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ v: UInt8) { bytes.append(v) }

    public mutating func u32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }

    public mutating func u64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }

    /// A 4-byte length, then the bytes.
    public mutating func data(_ v: [UInt8]) {
        u32(UInt32(v.count))
        bytes.append(contentsOf: v)
    }

    public mutating func string(_ v: String) { data(Array(v.utf8)) }

    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
}

/// Reads what `WireWriter` wrote; every read is bounds-checked and throws `WireError`.
package struct WireReader: Sendable {
    private let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset == bytes.count }

    private mutating func take(_ n: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw WireError("truncated: wanted \(n) bytes, \(remaining) left") }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    public mutating func u8() throws(WireError) -> UInt8 { try take(1).first! }

    public mutating func u32() throws(WireError) -> UInt32 {
        try take(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    public mutating func u64() throws(WireError) -> UInt64 {
        try take(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    public mutating func i64() throws(WireError) -> Int64 { Int64(bitPattern: try u64()) }

    /// Length-prefixed bytes, at most `limit` long.
    public mutating func data(limit: Int = 1 << 22) throws(WireError) -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw WireError("field of \(n) bytes exceeds the limit of \(limit)") }
        return Array(try take(n))
    }

    /// Length-prefixed UTF-8, at most `limit` bytes; invalid UTF-8 is an error.
    public mutating func string(limit: Int = 64 * 1024) throws(WireError) -> String {
        let raw = try data(limit: limit)
        guard let s = String(validating: raw, as: UTF8.self) else { throw WireError("invalid UTF-8") }
        return s
    }

    public mutating func bool() throws(WireError) -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        case let b: throw WireError("invalid bool byte \(b)")
        }
    }

    /// A 4-byte element count, at most `limit` and at most the bytes left
    /// (every element takes at least one), so a lying count fails at once.
    public mutating func count(limit: Int = .max) throws(WireError) -> Int {
        let n = Int(try u32())
        guard n <= min(limit, remaining) else { throw WireError("count \(n) exceeds the limit or the input") }
        return n
    }

    /// Throws unless every byte was read.
    public func expectEnd() throws(WireError) {
        guard isAtEnd else { throw WireError("\(remaining) unexpected trailing bytes") }
    }
}
