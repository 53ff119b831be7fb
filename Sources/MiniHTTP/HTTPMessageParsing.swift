import SystemSupport

/// What `HTTPRequestParser` and `HTTPResponseParser` share (RFC 9112): the
/// input buffer and its read positions, finding lines and the end of a head,
/// field lines, the framing fields, and reading a body (Content-Length or
/// chunked, trailers included).
///
/// The two differ in their errors only: a syntax error is 400 in a request
/// (the client's fault) and 502 in a response (the server's), and a request
/// over a limit gets 431 or 413.
struct HTTPMessageReader: Sendable {
    enum Kind: Sendable {
        case request
        case response
    }

    enum Limit {
        case head
        case fieldCount
        case trailers
        case body
    }

    /// Where a message's body stands.
    enum BodyPhase: Sendable {
        /// Content-Length bytes still to come; 0: the message ends next.
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        /// In the trailer section, after `bytes` bytes of it.
        case trailers(bytes: Int)
    }

    /// The field lines of a head, with the ones that frame the message picked out.
    struct FieldSection {
        var headers = HTTPHeaders()
        var hostCount = 0
        var contentLengths: [String] = []
        var transferEncodings: [String] = []
    }

    let kind: Kind
    let limits: HTTPParserLimits
    private(set) var buffer: [UInt8] = []
    var readIndex = 0
    /// Where the search for the end of the head resumes.
    var scanIndex = 0
    /// Body bytes of the current message so far (chunked bodies only).
    private var chunkedBytes = 0

    init(_ kind: Kind, limits: HTTPParserLimits) {
        self.kind = kind
        self.limits = limits
    }

    /// A syntax error.
    func bad(_ reason: String) -> HTTPParseError {
        HTTPParseError(status: kind == .request ? 400 : 502, reason: reason)
    }

    /// The error for a message over one of the limits.
    func exceeded(_ limit: Limit) -> HTTPParseError {
        switch (kind, limit) {
        case (.request, .body): .bodyTooLarge
        case (.request, _): .headTooLarge
        case (.response, .head): bad("response head exceeds the limit")
        case (.response, .fieldCount): bad("too many header fields")
        case (.response, .trailers): bad("trailer section too large")
        case (.response, .body): bad("response body too large")
        }
    }

    /// Bytes received but not yet consumed.
    var bufferedByteCount: Int { buffer.count - readIndex }

    var isEmpty: Bool { readIndex == buffer.count }

    /// True when what is buffered is only CR and LF bytes (none at all included).
    var onlyEmptyLinesBuffered: Bool {
        buffer[readIndex...].allSatisfy { $0 == 13 || $0 == 10 }
    }

    mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        let dropped = compactConsumed(&buffer, readIndex: readIndex)
        readIndex -= dropped
        scanIndex = max(0, scanIndex - dropped)
        buffer.append(contentsOf: bytes)
    }

    /// Forgets all input, for a new connection.
    mutating func reset() {
        buffer.removeAll(keepingCapacity: buffer.capacity <= 64 * 1024)
        readIndex = 0
        scanIndex = 0
        chunkedBytes = 0
    }

    /// The message is over: the next head is searched from here.
    mutating func endMessage() {
        chunkedBytes = 0
        scanIndex = readIndex
    }

    /// Up to `remaining` buffered body bytes, or nil when none are buffered.
    mutating func takeBody(upTo remaining: Int) -> [UInt8]? {
        let n = min(buffer.count - readIndex, remaining)
        guard n > 0 else { return nil }
        defer { readIndex += n }
        return Array(buffer[readIndex..<readIndex + n])
    }

    // MARK: - Lines and heads

    /// Finds the CR of the next CRLF at or after `start`; a bare LF or CR is an error.
    func findLineEnd(
        from start: Int, limit: Int, what: String, tooLong: HTTPParseError
    ) throws(HTTPParseError) -> Int? {
        var i = start
        let end = buffer.count
        while i < end {
            let b = buffer[i]
            if b == 10 {
                guard i > start, buffer[i - 1] == 13 else { throw bad("bare LF in \(what)") }
                return i - 1
            }
            if b == 13, i + 1 < end, buffer[i + 1] != 10 { throw bad("bare CR in \(what)") }
            if i - start >= limit { throw tooLong }
            i += 1
        }
        if end - start > limit { throw tooLong }
        return nil
    }

    /// Finds the empty line that ends the head starting at `readIndex`: the
    /// index of the CR of the last field line's CRLF, or nil when more input is
    /// needed. Throws once the head is over `limits.maxHeadBytes`.
    mutating func findHeadEnd() throws(HTTPParseError) -> Int? {
        if scanIndex < readIndex { scanIndex = readIndex }
        var i = scanIndex
        let end = buffer.count
        var headEnd: Int? = nil
        while i < end {
            if buffer[i] == 10 {
                guard i > readIndex, buffer[i - 1] == 13 else { throw bad(kind == .request ? "bare LF in request head" : "bare LF in response head")
                }
                if i - readIndex >= 3, buffer[i - 2] == 10 {
                    headEnd = i - 3
                    break
                }
            }
            i += 1
        }
        guard let headEnd else {
            scanIndex = max(readIndex, end)
            if end - readIndex > limits.maxHeadBytes { throw exceeded(.head) }
            return nil
        }
        if headEnd + 4 - readIndex > limits.maxHeadBytes { throw exceeded(.head) }
        return headEnd
    }

    /// Skips empty lines (CRLF) before a start line.
    mutating func skipEmptyLines() {
        while buffer.count - readIndex >= 2, buffer[readIndex] == 13, buffer[readIndex + 1] == 10 {
            readIndex += 2
        }
    }

    /// Consumes the head that `findHeadEnd` found, up to and including its empty line.
    mutating func consumeHead(endingAt headEnd: Int) {
        readIndex = headEnd + 4
        scanIndex = readIndex
    }

    /// The CRLF-separated lines of a head (every LF in it is known to follow a CR),
    /// at most `limits.maxHeaderCount` field lines after the start line.
    func lines(_ range: Range<Int>) throws(HTTPParseError) -> [Range<Int>] {
        var lines: [Range<Int>] = []
        var lineStart = range.lowerBound
        var i = range.lowerBound
        while i < range.upperBound {
            if buffer[i] == 13 && i + 1 < range.upperBound && buffer[i + 1] == 10 {
                lines.append(lineStart..<i)
                i += 2
                lineStart = i
            } else {
                i += 1
            }
        }
        lines.append(lineStart..<range.upperBound)
        if lines.count - 1 > limits.maxHeaderCount { throw exceeded(.fieldCount) }
        return lines
    }

    // MARK: - Fields

    func parseFieldLines(_ lines: ArraySlice<Range<Int>>) throws(HTTPParseError) -> FieldSection {
        var section = FieldSection()
        for line in lines {
            guard !line.isEmpty else { throw bad("empty header line") }
            if buffer[line.lowerBound] == 32 || buffer[line.lowerBound] == 9 {
                throw bad("obsolete line folding is not allowed")
            }
            let (name, value) = try parseField(line)
            if asciiCaseInsensitiveEquals(name, "host") {
                section.hostCount += 1
            } else if asciiCaseInsensitiveEquals(name, "content-length") {
                section.contentLengths.append(value)
            } else if asciiCaseInsensitiveEquals(name, "transfer-encoding") {
                section.transferEncodings.append(value)
            }
            section.headers.add(name: name, value: value)
        }
        return section
    }

    func parseField(_ line: Range<Int>) throws(HTTPParseError) -> (String, String) {
        guard let colon = line.first(where: { buffer[$0] == 58 }) else { throw bad("header line without colon") }
        let nameRange = line.lowerBound..<colon
        guard !nameRange.isEmpty else { throw bad("empty header name") }
        for i in nameRange where !isTokenByte(buffer[i]) {
            throw buffer[i] == 32 || buffer[i] == 9
                ? bad("whitespace before colon in header") : bad("invalid character in header name")
        }
        var start = colon + 1
        var end = line.upperBound
        while start < end, buffer[start] == 32 || buffer[start] == 9 { start += 1 }
        while end > start, buffer[end - 1] == 32 || buffer[end - 1] == 9 { end -= 1 }
        for i in start..<end {
            let b = buffer[i]
            if (b < 32 && b != 9) || b == 127 { throw bad("invalid character in header value") }
        }
        return (String(decoding: buffer[nameRange], as: UTF8.self), String(decoding: buffer[start..<end], as: UTF8.self))
    }

    /// The transfer codings of the Transfer-Encoding fields, lowercased, in
    /// order (empty list elements kept, as "").
    static func transferCodings(_ values: [String]) -> [String] {
        var codings: [String] = []
        for value in values {
            for part in value.split(separator: ",", omittingEmptySubsequences: false) {
                codings.append(trimmedOWS(part).lowercased())
            }
        }
        return codings
    }

    /// The length the Content-Length fields give (a list of equal values counts as one).
    func contentLength(_ values: [String]) throws(HTTPParseError) -> Int {
        var length: Int? = nil
        for value in values {
            for part in value.split(separator: ",", omittingEmptySubsequences: false) {
                let digits = trimmedOWS(part)
                guard !digits.isEmpty, digits.utf8.count <= 18, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                    let n = Int(digits)
                else { throw bad("invalid Content-Length") }
                if let length, length != n { throw bad("conflicting Content-Length values") }
                length = n
            }
        }
        return length ?? 0
    }

    /// Whether the connection persists after the message, by its version and Connection field.
    static func keepAlive(version: HTTPVersion, headers: HTTPHeaders) -> Bool {
        if version == .http1_1 {
            return !headers.containsToken("close", in: "Connection")
        }
        return headers.containsToken("keep-alive", in: "Connection")
            && !headers.containsToken("close", in: "Connection")
    }

    // MARK: - Bodies

    /// The next event of the body at `phase`, or nil when more input is
    /// needed. After `.end` (the body and any trailer section are complete)
    /// `phase` is nil. The trailer section counts against
    /// `limits.maxHeadBytes`, a chunked body against `limits.maxBodyBytes`.
    mutating func readBody<Event: HTTPMessageEvent>(_ phase: inout BodyPhase?) throws(HTTPParseError) -> Event? {
        while let current = phase {
            switch current {
            case .fixed(remaining: 0):
                endMessage()
                phase = nil
                return .end
            case .fixed(let remaining):
                guard let chunk = takeBody(upTo: remaining) else { return nil }
                phase = .fixed(remaining: remaining - chunk.count)
                return .body(chunk)
            case .chunkSize:
                guard let lineEnd = try findLineEnd(
                    from: readIndex, limit: 4096, what: "chunk size line", tooLong: bad("chunk size line too long"))
                else { return nil }
                let size = try parseChunkSize(readIndex..<lineEnd)
                readIndex = lineEnd + 2
                if size == 0 {
                    phase = .trailers(bytes: 0)
                } else {
                    if size > limits.maxBodyBytes - chunkedBytes { throw exceeded(.body) }
                    chunkedBytes += size
                    phase = .chunkData(remaining: size)
                }
            case .chunkData(let remaining):
                guard let chunk = takeBody(upTo: remaining) else { return nil }
                phase = chunk.count == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - chunk.count)
                return .body(chunk)
            case .chunkDataEnd:
                guard buffer.count - readIndex >= 2 else { return nil }
                guard buffer[readIndex] == 13 && buffer[readIndex + 1] == 10 else {
                    throw bad("chunk data not followed by CRLF")
                }
                readIndex += 2
                phase = .chunkSize
            case .trailers(let bytes):
                guard let lineEnd = try findLineEnd(
                    from: readIndex, limit: limits.maxHeadBytes - bytes, what: "trailer section",
                    tooLong: exceeded(.trailers))
                else { return nil }
                if lineEnd == readIndex {
                    readIndex += 2
                    endMessage()
                    phase = nil
                    return .end
                }
                let line = readIndex..<lineEnd
                if buffer[line.lowerBound] == 32 || buffer[line.lowerBound] == 9 {
                    throw bad("obsolete line folding in trailer")
                }
                _ = try parseField(line)
                phase = .trailers(bytes: bytes + (lineEnd + 2 - readIndex))
                readIndex = lineEnd + 2
            }
        }
        return nil
    }

    func parseChunkSize(_ line: Range<Int>) throws(HTTPParseError) -> Int {
        var size = 0
        var digits = 0
        var significantDigits = 0  // leading zeros are allowed and do not count
        var i = line.lowerBound
        while i < line.upperBound, let d = hexValue(buffer[i]) {
            digits += 1
            if significantDigits > 0 || d > 0 { significantDigits += 1 }
            if significantDigits > 15 { throw bad("chunk size too large") }
            size = size * 16 + d
            i += 1
        }
        guard digits > 0 else { throw bad("invalid chunk size") }
        // Optional chunk extensions: BWS ";" ... (ignored, but must be printable).
        while i < line.upperBound, buffer[i] == 32 || buffer[i] == 9 { i += 1 }
        if i < line.upperBound {
            guard buffer[i] == 59 else { throw bad("invalid chunk size") }
            for j in i..<line.upperBound {
                let b = buffer[j]
                if (b < 32 && b != 9) || b == 127 { throw bad("invalid chunk extension") }
            }
        }
        return size
    }
}

/// The events of a parser: `.head`, any number of `.body`, `.end`.
protocol HTTPMessageEvent {
    static func body(_ bytes: [UInt8]) -> Self
    static var end: Self { get }
}

extension HTTPRequestParser.Event: HTTPMessageEvent {}
extension HTTPResponseParser.Event: HTTPMessageEvent {}

@inline(__always) func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }

@inline(__always) func hexValue(_ b: UInt8) -> Int? {
    switch b {
    case 48...57: Int(b - 48)
    case 65...70: Int(b - 55)
    case 97...102: Int(b - 87)
    default: nil
    }
}

/// RFC 9110 tchar.
@inline(__always) func isTokenByte(_ b: UInt8) -> Bool {
    switch b {
    case 48...57, 65...90, 97...122: true
    case 33, 35, 36, 37, 38, 39, 42, 43, 45, 46, 94, 95, 96, 124, 126: true
    default: false
    }
}
