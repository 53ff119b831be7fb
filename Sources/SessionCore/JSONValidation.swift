/// Whether `bytes` are exactly one JSON value (RFC 8259), with optional
/// surrounding whitespace. Stores use it to drop foreign or corrupt
/// attribute values instead of handing them to handlers.
public func isValidJSON(_ bytes: [UInt8]) -> Bool {
    var parser = JSONSyntaxChecker(bytes: bytes)
    return parser.check()
}

private struct JSONSyntaxChecker {
    let bytes: [UInt8]
    var i = 0
    var depth = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func check() -> Bool {
        skipSpace()
        guard value() else { return false }
        skipSpace()
        return i == bytes.count
    }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 32 || bytes[i] == 9 || bytes[i] == 10 || bytes[i] == 13 { i += 1 }
    }

    mutating func literal(_ word: String) -> Bool {
        for b in word.utf8 {
            guard i < bytes.count, bytes[i] == b else { return false }
            i += 1
        }
        return true
    }

    mutating func value() -> Bool {
        guard i < bytes.count else { return false }
        switch bytes[i] {
        case 123: return container(close: 125, keyed: true)  // {
        case 91: return container(close: 93, keyed: false)  // [
        case 34: return string()
        case 116: return literal("true")
        case 102: return literal("false")
        case 110: return literal("null")
        default: return number()
        }
    }

    mutating func container(close: UInt8, keyed: Bool) -> Bool {
        depth += 1
        defer { depth -= 1 }
        guard depth <= 512 else { return false }
        i += 1
        skipSpace()
        if i < bytes.count, bytes[i] == close {
            i += 1
            return true
        }
        while true {
            if keyed {
                guard i < bytes.count, bytes[i] == 34, string() else { return false }
                skipSpace()
                guard i < bytes.count, bytes[i] == 58 else { return false }
                i += 1
                skipSpace()
            }
            guard value() else { return false }
            skipSpace()
            guard i < bytes.count else { return false }
            if bytes[i] == close {
                i += 1
                return true
            }
            guard bytes[i] == 44 else { return false }
            i += 1
            skipSpace()
        }
    }

    mutating func string() -> Bool {
        i += 1  // opening quote
        while i < bytes.count {
            let b = bytes[i]
            if b == 34 {
                i += 1
                return true
            }
            if b < 32 { return false }
            if b == 92 {
                i += 1
                guard i < bytes.count else { return false }
                switch bytes[i] {
                case 34, 92, 47, 98, 102, 110, 114, 116: i += 1
                case 117:
                    guard i + 4 < bytes.count else { return false }
                    for j in 1...4 where !isHex(bytes[i + j]) { return false }
                    i += 5
                default: return false
                }
                continue
            }
            i += 1
        }
        return false
    }

    mutating func number() -> Bool {
        let start = i
        if i < bytes.count, bytes[i] == 45 { i += 1 }
        guard i < bytes.count, isDigit(bytes[i]) else { return false }
        if bytes[i] == 48 {
            i += 1
        } else {
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
        }
        if i < bytes.count, bytes[i] == 46 {
            i += 1
            guard i < bytes.count, isDigit(bytes[i]) else { return false }
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
        }
        if i < bytes.count, bytes[i] == 101 || bytes[i] == 69 {
            i += 1
            if i < bytes.count, bytes[i] == 43 || bytes[i] == 45 { i += 1 }
            guard i < bytes.count, isDigit(bytes[i]) else { return false }
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
        }
        return i > start
    }

    func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }
    func isHex(_ b: UInt8) -> Bool { isDigit(b) || (b >= 65 && b <= 70) || (b >= 97 && b <= 102) }
}
