#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SystemSupport

/// What the supervisor asks its private redis-servers, over a raw loopback socket:
/// one RESP command, one reply (no client library: the supervisor does not link one).
enum RedisProbe {
    /// A reply of the kinds these commands return (RESP2).
    indirect enum Reply: Equatable, Sendable {
        case simple(String)
        case error(String)
        case integer(Int)
        /// nil: the null bulk string.
        case bulk(String?)
        /// nil: the null array (e.g. `SENTINEL get-master-addr-by-name` for an unknown name).
        case array([Reply]?)

        /// The text of a simple or bulk string.
        var text: String? {
            switch self {
            case .simple(let text): text
            case .bulk(let text): text
            case .error, .integer, .array: nil
            }
        }
    }

    /// Sends `arguments` as one command to 127.0.0.1:`port`; its reply, or nil on any
    /// failure (refused, closed, a reply not understood) or after about `timeoutMillis`.
    static func command(port: Int, _ arguments: [String], timeoutMillis: Int = 500) -> Reply? {
        guard let fd = try? Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: Int32(timeoutMillis)) else {
            return nil
        }
        defer { close(fd) }
        Sockets.setReceiveTimeout(fd, millis: timeoutMillis)
        Sockets.setSendTimeout(fd, millis: timeoutMillis)
        var request = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            let bytes = Array(argument.utf8)
            request += Array("$\(bytes.count)\r\n".utf8) + bytes + [13, 10]
        }
        guard Sockets.writeAll(fd, request) else { return nil }
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while monotonicMillis() < deadline {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            received += chunk[0..<n]
            switch parse(received) {
            case .complete(let reply): return reply
            case .incomplete: continue
            case .invalid: return nil
            }
        }
        return nil
    }

    /// PING → PONG.
    static func answersPing(port: Int, timeoutMillis: Int = 200) -> Bool {
        command(port: port, ["PING"], timeoutMillis: timeoutMillis) == .simple("PONG")
    }

    enum Parsed: Equatable {
        case complete(Reply)
        case incomplete
        case invalid
    }

    /// One reply from the start of `bytes`.
    static func parse(_ bytes: [UInt8]) -> Parsed {
        switch parse(bytes, from: 0, depth: 0) {
        case .complete(let reply, _): .complete(reply)
        case .incomplete: bytes.count > 64 * 1024 ? .invalid : .incomplete
        case .invalid: .invalid
        }
    }

    /// A reply parsed from `bytes[start...]`, and where the next one begins.
    private enum Step {
        case complete(Reply, next: Int)
        case incomplete
        case invalid
    }

    /// The most nested arrays accepted (the commands used return one level).
    private static let maxDepth = 4

    private static func parse(_ bytes: [UInt8], from start: Int, depth: Int) -> Step {
        guard start < bytes.count else { return .incomplete }
        guard let lineEnd = firstCRLF(bytes, from: start) else { return .incomplete }
        let line = String(decoding: bytes[(start + 1)..<lineEnd], as: UTF8.self)
        let next = lineEnd + 2
        switch bytes[start] {
        case UInt8(ascii: "+"): return .complete(.simple(line), next: next)
        case UInt8(ascii: "-"): return .complete(.error(line), next: next)
        case UInt8(ascii: ":"): return Int(line).map { .complete(.integer($0), next: next) } ?? .invalid
        case UInt8(ascii: "$"):
            guard let length = Int(line), length >= -1 else { return .invalid }
            if length == -1 { return .complete(.bulk(nil), next: next) }
            guard bytes.count >= next + length + 2 else { return .incomplete }
            return .complete(.bulk(String(decoding: bytes[next..<next + length], as: UTF8.self)), next: next + length + 2)
        case UInt8(ascii: "*"):
            guard let count = Int(line), count >= -1, depth < maxDepth else { return .invalid }
            if count == -1 { return .complete(.array(nil), next: next) }
            var elements: [Reply] = []
            var position = next
            for _ in 0..<count {
                switch parse(bytes, from: position, depth: depth + 1) {
                case .complete(let element, let after):
                    elements.append(element)
                    position = after
                case .incomplete: return .incomplete
                case .invalid: return .invalid
                }
            }
            return .complete(.array(elements), next: position)
        default:
            return .invalid
        }
    }

    private static func firstCRLF(_ bytes: [UInt8], from start: Int) -> Int? {
        var index = start
        while index + 1 < bytes.count {
            if bytes[index] == 13 && bytes[index + 1] == 10 { return index }
            index += 1
        }
        return nil
    }

    /// The `field:value` lines of an INFO or CLUSTER INFO text.
    static func fields(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(whereSeparator: \.isNewline) {  // "\r\n" is one Character
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        return fields
    }
}
