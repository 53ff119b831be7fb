/// The status line and header fields of a response, as parsed.
public struct HTTPResponseHead: Sendable, Equatable {
    public var version: HTTPVersion
    public var status: Int
    /// The reason phrase as sent (may be empty).
    public var reason: String
    public var headers: HTTPHeaders
    /// Whether the connection may carry another response after this one.
    public var keepAlive: Bool
    /// How the body is delimited.
    public var bodyFraming: BodyFraming

    public enum BodyFraming: Sendable, Equatable {
        /// No body: 1xx, 204, 304, or the answer to a HEAD request.
        case none
        case contentLength(Int)
        case chunked
        /// The body runs until the server closes the connection.
        case untilClose
    }

    public init(
        version: HTTPVersion = .http1_1, status: Int, reason: String = "", headers: HTTPHeaders = [:],
        keepAlive: Bool = true, bodyFraming: BodyFraming = .none
    ) {
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keepAlive = keepAlive
        self.bodyFraming = bodyFraming
    }

    /// An interim (1xx) response: a final response follows on the same connection.
    public var isInterim: Bool { status < 200 }
}

/// An incremental HTTP/1.1 response parser (for clients and proxies).
///
/// Feed it bytes in any split with `append`, pull events with `next()` until
/// it returns nil. Every message, interim (1xx) ones included, is reported as
/// `.head`, any number of `.body`, then `.end`. Before each response arrives,
/// say whether it answers a HEAD request (`expectResponse(toHEAD:)`): such a
/// response has no body whatever its headers say. When the connection ends,
/// call `finish()`: it ends a body delimited by the close, and throws when a
/// message was cut short. Errors use status 502 (the peer is a server).
public struct HTTPResponseParser: Sendable {
    public enum Event: Sendable, Equatable {
        case head(HTTPResponseHead)
        case body([UInt8])
        case end
    }

    private enum State: Sendable {
        case head
        case body(HTTPMessageReader.BodyPhase)
        case untilClose
        case closed
        case failed(HTTPParseError)
    }

    private var reader: HTTPMessageReader
    private var state: State = .head
    private var toHEAD = false

    public init(maxHeadBytes: Int = 64 * 1024, maxHeaderCount: Int = 256) {
        reader = HTTPMessageReader(
            .response, limits: HTTPParserLimits(maxHeadBytes: maxHeadBytes, maxHeaderCount: maxHeaderCount, maxBodyBytes: .max))
    }

    /// Status line plus headers, in bytes.
    public var maxHeadBytes: Int { reader.limits.maxHeadBytes }
    /// Number of header fields.
    public var maxHeaderCount: Int { reader.limits.maxHeaderCount }

    /// Whether the next response (and its interim responses) answers a HEAD request.
    public mutating func expectResponse(toHEAD: Bool) { self.toHEAD = toHEAD }

    /// Bytes received but not yet consumed by `next()`.
    public var bufferedByteCount: Int { reader.bufferedByteCount }

    /// True between messages: no response is partly parsed.
    public var isAtMessageBoundary: Bool {
        if case .head = state { return reader.isEmpty }
        return false
    }

    /// Forgets all input and state, for a new connection.
    public mutating func reset() {
        reader.reset()
        state = .head
        toHEAD = false
    }

    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        reader.append(bytes)
    }

    /// The next parse event, or nil when more input is needed.
    public mutating func next() throws(HTTPParseError) -> Event? {
        if case .failed(let error) = state { throw error }
        do throws(HTTPParseError) {
            return try step()
        } catch {
            state = .failed(error)
            throw error
        }
    }

    /// The peer closed the connection: call until it returns nil. A body
    /// delimited by the close yields its last bytes and `.end`; nothing is
    /// returned when no message was in progress; a message cut short throws.
    public mutating func finish() throws(HTTPParseError) -> Event? {
        switch state {
        case .failed(let error):
            throw error
        case .untilClose:
            if let rest = reader.takeBody(upTo: Int.max) { return .body(rest) }
            state = .closed
            return .end
        case .closed:
            return nil
        case .head where reader.isEmpty:
            state = .closed
            return nil
        default:
            let error = reader.bad("connection closed in the middle of a response")
            state = .failed(error)
            throw error
        }
    }

    private mutating func step() throws(HTTPParseError) -> Event? {
        switch state {
        case .failed(let error):
            throw error
        case .closed:
            return nil
        case .head:
            return try parseHead()
        case .untilClose:
            return reader.takeBody(upTo: Int.max).map { .body($0) }
        case .body(let phase):
            var next: HTTPMessageReader.BodyPhase? = phase
            let event: Event? = try reader.readBody(&next)
            state = next.map(State.body) ?? .head
            return event
        }
    }

    private mutating func parseHead() throws(HTTPParseError) -> Event? {
        guard let headEnd = try reader.findHeadEnd() else { return nil }
        let head = try parseHeadLines(reader.readIndex..<headEnd)
        reader.consumeHead(endingAt: headEnd)
        switch head.bodyFraming {
        case .none: state = .body(.fixed(remaining: 0))
        case .contentLength(let n): state = .body(.fixed(remaining: n))
        case .chunked: state = .body(.chunkSize)
        case .untilClose: state = .untilClose
        }
        return .head(head)
    }

    private func parseHeadLines(_ range: Range<Int>) throws(HTTPParseError) -> HTTPResponseHead {
        let lines = try reader.lines(range)

        let (version, status, reason) = try parseStatusLine(lines[0])
        let fields = try reader.parseFieldLines(lines.dropFirst())
        var framing = HTTPResponseHead.BodyFraming.untilClose
        let bodyless = toHEAD || status < 200 || status == 204 || status == 304
        if !fields.transferEncodings.isEmpty {
            if !fields.contentLengths.isEmpty { throw reader.bad("both Content-Length and Transfer-Encoding") }
            guard HTTPMessageReader.transferCodings(fields.transferEncodings) == ["chunked"] else {
                throw reader.bad("transfer coding not supported (only chunked)")
            }
            framing = .chunked
        } else if !fields.contentLengths.isEmpty {
            framing = .contentLength(try reader.contentLength(fields.contentLengths))
        }
        if bodyless { framing = .none }

        var keepAlive = HTTPMessageReader.keepAlive(version: version, headers: fields.headers)
        if framing == .untilClose { keepAlive = false }
        return HTTPResponseHead(
            version: version, status: status, reason: reason, headers: fields.headers, keepAlive: keepAlive,
            bodyFraming: framing)
    }

    private func parseStatusLine(_ line: Range<Int>) throws(HTTPParseError) -> (HTTPVersion, Int, String) {
        let buffer = reader.buffer
        // HTTP-version SP 3DIGIT SP [reason]; a missing final SP is tolerated.
        let l = line.lowerBound
        guard line.count >= 12, buffer[l..<l + 5].elementsEqual("HTTP/".utf8), isDigit(buffer[l + 5]),
            buffer[l + 6] == 46, isDigit(buffer[l + 7]), buffer[l + 8] == 32,
            isDigit(buffer[l + 9]), isDigit(buffer[l + 10]), isDigit(buffer[l + 11])
        else { throw reader.bad("malformed status line") }
        let version = HTTPVersion(major: Int(buffer[l + 5] - 48), minor: Int(buffer[l + 7] - 48))
        guard version == .http1_1 || version == .http1_0 else { throw reader.bad("\(version) is not supported") }
        let status = Int(buffer[l + 9] - 48) * 100 + Int(buffer[l + 10] - 48) * 10 + Int(buffer[l + 11] - 48)
        guard (100...599).contains(status) else { throw reader.bad("invalid status code") }
        var reason = ""
        if line.count > 12 {
            guard buffer[l + 12] == 32 else { throw reader.bad("malformed status line") }
            let reasonRange = l + 13..<line.upperBound
            for j in reasonRange {
                let b = buffer[j]
                if (b < 32 && b != 9) || b == 127 { throw reader.bad("invalid character in reason phrase") }
            }
            reason = String(decoding: buffer[reasonRange], as: UTF8.self)
        }
        return (version, status, reason)
    }
}
