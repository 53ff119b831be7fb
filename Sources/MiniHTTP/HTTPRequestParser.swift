/// An incremental HTTP/1.1 request parser.
///
/// Feed it bytes as they arrive, in any split, with `append`; pull events with
/// `next()` until it returns nil (more input needed). Pipelined requests are
/// parsed one after another from the same buffer. After an error every later
/// call to `next()` throws the same error.
public struct HTTPRequestParser: Sendable {
    public enum Event: Sendable, Equatable {
        case head(HTTPRequestHead)
        case body([UInt8])
        case end
    }

    private enum State: Sendable {
        case head
        case body(HTTPMessageReader.BodyPhase)
        case failed(HTTPParseError)
    }

    private var reader: HTTPMessageReader
    private var state: State = .head

    public init(limits: HTTPParserLimits = HTTPParserLimits()) {
        reader = HTTPMessageReader(.request, limits: limits)
    }

    public var limits: HTTPParserLimits { reader.limits }

    /// Bytes received but not yet consumed by `next()`.
    public var bufferedByteCount: Int { reader.bufferedByteCount }

    /// True between messages: no request is partly parsed.
    public var isAtMessageBoundary: Bool {
        if case .head = state { return reader.isEmpty || reader.onlyEmptyLinesBuffered }
        return false
    }

    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        reader.append(bytes)
    }

    /// The next parse event, or nil when more input is needed.
    public mutating func next() throws(HTTPParseError) -> Event? {
        switch state {
        case .failed(let error):
            throw error
        default:
            do throws(HTTPParseError) {
                return try step()
            } catch {
                state = .failed(error)
                throw error
            }
        }
    }

    private mutating func step() throws(HTTPParseError) -> Event? {
        switch state {
        case .failed(let error):
            throw error
        case .head:
            return try parseHead()
        case .body(let phase):
            var next: HTTPMessageReader.BodyPhase? = phase
            let event: Event? = try reader.readBody(&next)
            state = next.map(State.body) ?? .head
            return event
        }
    }

    private mutating func parseHead() throws(HTTPParseError) -> Event? {
        // Tolerate empty lines before a request line (RFC 9112 §2.2).
        reader.skipEmptyLines()
        guard let headEnd = try reader.findHeadEnd() else { return nil }
        let head = try parseHeadLines(reader.readIndex..<headEnd)
        reader.consumeHead(endingAt: headEnd)
        switch head.bodyFraming {
        case .none: state = .body(.fixed(remaining: 0))
        case .contentLength(let n): state = .body(.fixed(remaining: n))
        case .chunked: state = .body(.chunkSize)
        }
        return .head(head)
    }

    private func parseHeadLines(_ range: Range<Int>) throws(HTTPParseError) -> HTTPRequestHead {
        let lines = try reader.lines(range)

        let (method, target, version) = try parseRequestLine(lines[0])
        let fields = try reader.parseFieldLines(lines.dropFirst())
        let headers = fields.headers
        if version == .http1_1 && fields.hostCount == 0 { throw .bad("missing Host header") }
        if fields.hostCount > 1 { throw .bad("more than one Host header") }

        var framing = HTTPRequestHead.BodyFraming.none
        if !fields.transferEncodings.isEmpty {
            if !fields.contentLengths.isEmpty { throw .bad("both Content-Length and Transfer-Encoding") }
            if version == .http1_0 { throw .bad("Transfer-Encoding in an HTTP/1.0 request") }
            let codings = HTTPMessageReader.transferCodings(fields.transferEncodings)
            if codings.contains(where: { $0 != "chunked" && !$0.isEmpty }) {
                throw HTTPParseError(status: 501, reason: "transfer coding not supported (only chunked)")
            }
            guard codings == ["chunked"] else { throw .bad("invalid Transfer-Encoding") }
            framing = .chunked
        } else if !fields.contentLengths.isEmpty {
            let n = try reader.contentLength(fields.contentLengths)
            if n > limits.maxBodyBytes { throw .bodyTooLarge }
            framing = .contentLength(n)
        }

        let keepAlive = HTTPMessageReader.keepAlive(version: version, headers: headers)
        let expectsContinue = version == .http1_1 && (headers["Expect"].map {
            asciiCaseInsensitiveEquals(trimmedOWS($0), "100-continue")
        } ?? false)

        return HTTPRequestHead(
            method: method, target: target, version: version, headers: headers,
            keepAlive: keepAlive, bodyFraming: framing, expectsContinue: expectsContinue)
    }

    private func parseRequestLine(_ line: Range<Int>) throws(HTTPParseError) -> (String, String, HTTPVersion) {
        let buffer = reader.buffer
        var spaces: [Int] = []
        for i in line where buffer[i] == 32 {
            spaces.append(i)
            if spaces.count > 2 { throw .bad("malformed request line") }
        }
        guard spaces.count == 2 else { throw .bad("malformed request line") }
        let methodRange = line.lowerBound..<spaces[0]
        let targetRange = spaces[0] + 1..<spaces[1]
        let versionRange = spaces[1] + 1..<line.upperBound
        guard !methodRange.isEmpty, methodRange.allSatisfy({ isTokenByte(buffer[$0]) }) else {
            throw .bad("invalid method")
        }
        guard !targetRange.isEmpty, targetRange.allSatisfy({ buffer[$0] > 32 && buffer[$0] < 127 }) else {
            throw .bad("invalid request target")
        }
        let v = buffer[versionRange]
        guard v.count == 8, v.starts(with: Array("HTTP/".utf8)),
            isDigit(v[v.startIndex + 5]), v[v.startIndex + 6] == 46, isDigit(v[v.startIndex + 7])
        else { throw .bad("malformed HTTP version") }
        let version = HTTPVersion(major: Int(v[v.startIndex + 5] - 48), minor: Int(v[v.startIndex + 7] - 48))
        guard version == .http1_1 || version == .http1_0 else {
            throw HTTPParseError(status: 505, reason: "\(version) is not supported")
        }
        return (
            String(decoding: buffer[methodRange], as: UTF8.self),
            String(decoding: buffer[targetRange], as: UTF8.self),
            version
        )
    }
}
