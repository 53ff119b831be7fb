import SystemSupport

/// A response read off a raw socket by `RawHTTPConnection`.
public struct RawHTTPResponse: Sendable {
    /// How the body was delimited.
    public enum Framing: Equatable, Sendable {
        /// No body: a 1xx, 204 or 304 response, or the answer to a HEAD request.
        case none
        case contentLength(Int)
        case chunked
        /// Read until the server closed the connection.
        case untilClose
    }

    /// `HTTP/1.1 200 OK`.
    public var statusLine: String
    /// The status code (-1 when the status line has none).
    public var status: Int
    /// The header fields, in order.
    public var headers: [(name: String, value: String)]
    /// The body (de-chunked).
    public var body: [UInt8]
    public var framing: Framing

    /// The body as text.
    public var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// Whether it is an interim (1xx) response.
    public var isInterim: Bool { (100..<200).contains(status) }

    /// The first value of a header (case-insensitive name).
    public func header(_ name: String) -> String? { values(name).first }

    /// The values of every header `name` (case-insensitive), in order.
    public func values(_ name: String) -> [String] {
        headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    /// The values of every `Set-Cookie` header.
    public var setCookies: [String] { values("Set-Cookie") }

    /// Whether any `name` header lists `token` (comma-separated, case-insensitive),
    /// e.g. `close` in `Connection`.
    public func lists(_ token: String, in name: String) -> Bool {
        values(name).contains { value in
            value.split(separator: ",").contains { String($0).trimmingSpaces.lowercased() == token.lowercased() }
        }
    }
}

/// A blocking HTTP/1.1 client over a raw socket, for tests: it sends the bytes it is
/// given, as they are, and reads responses with a parser of its own (it shares nothing
/// with the servers under test), with a deadline on every read. Not for concurrent use.
public final class RawHTTPConnection: TestConnection {
    public enum ReadResult: Equatable, Sendable { case data, closed, timeout }

    private var buffer: [UInt8] = []
    /// Whether the peer closed the connection (or reset it).
    public private(set) var peerClosed = false

    /// Bytes received but not yet read as a response.
    public var unconsumed: [UInt8] { buffer }

    /// Reads whatever arrives within `timeoutMillis`.
    public func readMore(timeoutMillis: Int) -> ReadResult {
        if peerClosed { return .closed }
        switch receiveSome(fd, deadline: monotonicMillis() + Int64(timeoutMillis)) {
        case .bytes(let bytes):
            buffer.append(contentsOf: bytes)
            return .data
        case .timeout:
            return .timeout
        case .closed, .pollFailed:
            peerClosed = true
            return .closed
        }
    }

    /// Reads the next response, an interim (1xx) one too. Nil when the connection
    /// closes or the time is up first, or the response is malformed.
    /// `headOnly`: the answer to a HEAD request, whose Content-Length describes no body.
    public func readResponse(timeoutMillis: Int = 5_000, headOnly: Bool = false) -> RawHTTPResponse? {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while true {
            switch takeResponse(headOnly: headOnly) {
            case .response(let response): return response
            case .malformed: return nil
            case .incomplete: break
            }
            let remaining = Int(deadline - monotonicMillis())
            if remaining <= 0 || peerClosed { return nil }
            _ = readMore(timeoutMillis: remaining)
        }
    }

    /// Reads the next final response, skipping interim (1xx) ones; nil as `readResponse`.
    public func readFinalResponse(timeoutMillis: Int = 5_000, headOnly: Bool = false) -> RawHTTPResponse? {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while let response = readResponse(timeoutMillis: max(0, Int(deadline - monotonicMillis())), headOnly: headOnly) {
            if !response.isInterim { return response }
        }
        return nil
    }

    /// True when the peer closes the connection within `timeoutMillis` (bytes that
    /// arrive meanwhile are kept, unread).
    public func waitForClose(timeoutMillis: Int = 3_000) -> Bool {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while !peerClosed {
            let remaining = Int(deadline - monotonicMillis())
            if remaining <= 0 || readMore(timeoutMillis: remaining) == .timeout { return false }
        }
        return true
    }

    /// Sends one request (`Host: 127.0.0.1:PORT`, a `Content-Length`, `Connection: close`
    /// when `close`) and reads its final response; throws when none comes within `timeoutMillis`.
    public func request(
        _ method: String, _ target: String, headers: [String: String] = [:], body: String = "", close: Bool = false,
        timeoutMillis: Int = 20_000
    ) throws -> RawHTTPResponse {
        var text = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n"
        if close { text += "Connection: close\r\n" }
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { text += "\(name): \(value)\r\n" }
        text += "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
        guard send(text) else { throw TestError("\(method) \(target): sending to port \(port) failed") }
        guard let response = readFinalResponse(timeoutMillis: timeoutMillis) else {
            throw TestError("\(method) \(target): no whole response from port \(port) (peer closed: \(peerClosed))")
        }
        return response
    }

    private enum Taken {
        case response(RawHTTPResponse)
        case incomplete
        case malformed
    }

    /// The response at the start of the buffer, removed from it, when it is all there.
    private func takeResponse(headOnly: Bool) -> Taken {
        guard let headEnd = find([13, 10, 13, 10], from: 0) else { return .incomplete }
        var lines = String(decoding: buffer[0..<headEnd], as: UTF8.self)
            .split(separator: "\r\n" as Character, omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        let status = parts.count >= 2 ? Int(parts[1]) ?? -1 : -1
        let headers = lines.compactMap { line -> (name: String, value: String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingSpaces)
        }
        var response = RawHTTPResponse(statusLine: statusLine, status: status, headers: headers, body: [], framing: .none)
        let bodyStart = headEnd + 4
        var end = bodyStart
        if headOnly || response.isInterim || status == 204 || status == 304 {
            response.framing = .none
        } else if let coding = response.values("Transfer-Encoding").last?.split(separator: ",").last,
            String(coding).trimmingSpaces.lowercased() == "chunked"
        {
            response.framing = .chunked
            switch dechunk(from: bodyStart) {
            case .some(.some(let (body, next))):
                response.body = body
                end = next
            case .some(.none): return .malformed
            case .none: return .incomplete
            }
        } else if let lengthText = response.header("Content-Length") {
            guard let length = Int(lengthText), length >= 0 else { return .malformed }
            response.framing = .contentLength(length)
            guard buffer.count - bodyStart >= length else { return .incomplete }
            response.body = Array(buffer[bodyStart..<bodyStart + length])
            end = bodyStart + length
        } else {
            response.framing = .untilClose
            guard peerClosed else { return .incomplete }
            response.body = Array(buffer[bodyStart...])
            end = buffer.count
        }
        buffer.removeFirst(end)
        return .response(response)
    }

    /// A chunked body from `start`: nil while incomplete, `.some(nil)` when malformed,
    /// else the data and where the message ends (after the trailers).
    private func dechunk(from start: Int) -> ([UInt8], Int)?? {
        var body: [UInt8] = []
        var position = start
        while true {
            guard let lineEnd = find([13, 10], from: position) else { return nil }
            let sizeText = String(
                String(decoding: buffer[position..<lineEnd], as: UTF8.self)
                    .split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)[0]
            ).trimmingSpaces
            guard let size = Int(sizeText, radix: 16), size >= 0 else { return .some(nil) }
            position = lineEnd + 2
            if size == 0 { break }
            guard buffer.count >= position + size + 2 else { return nil }
            guard buffer[position + size] == 13, buffer[position + size + 1] == 10 else { return .some(nil) }
            body += buffer[position..<position + size]
            position += size + 2
        }
        while true {  // trailer fields, up to the empty line
            guard let lineEnd = find([13, 10], from: position) else { return nil }
            let empty = lineEnd == position
            position = lineEnd + 2
            if empty { return (body, position) }
        }
    }

    /// Where `pattern` first starts in the buffer at or after `start`.
    private func find(_ pattern: [UInt8], from start: Int) -> Int? {
        guard buffer.count >= start + pattern.count else { return nil }
        return (start...(buffer.count - pattern.count)).first { i in
            pattern.indices.allSatisfy { buffer[i + $0] == pattern[$0] }
        }
    }
}

/// One HTTP/1.1 request on a new loopback connection, with `Connection: close`, and
/// its final response: a client that shares nothing with the server under test.
public func rawHTTP(
    port: Int, _ method: String, _ target: String, headers: [String: String] = [:], body: String = "",
    timeoutMillis: Int = 20_000
) throws -> RawHTTPResponse {
    let connection = try RawHTTPConnection(port: port)
    defer { connection.close() }
    return try connection.request(method, target, headers: headers, body: body, close: true, timeoutMillis: timeoutMillis)
}
