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
        case endPending
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers(bytes: Int)
        case failed(HTTPParseError)
    }

    public let limits: HTTPParserLimits
    private var buffer: [UInt8] = []
    private var readIndex = 0
    /// Where the search for the end of the head resumes.
    private var scanIndex = 0
    private var state: State = .head
    private var bodyBytes = 0

    public init(limits: HTTPParserLimits = HTTPParserLimits()) {
        self.limits = limits
    }

    /// Bytes received but not yet consumed by `next()`.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    /// True between messages: no request is partly parsed.
    public var isAtMessageBoundary: Bool {
        if case .head = state { return readIndex == buffer.count || onlyEmptyLinesBuffered }
        return false
    }

    private var onlyEmptyLinesBuffered: Bool {
        buffer[readIndex...].allSatisfy { $0 == 13 || $0 == 10 }
    }

    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        compactIfUseful()
        buffer.append(contentsOf: bytes)
    }

    private mutating func compactIfUseful() {
        let dropped = compactConsumed(&buffer, readIndex: readIndex)
        readIndex -= dropped
        scanIndex = max(0, scanIndex - dropped)
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
        while true {
            switch state {
            case .failed(let error):
                throw error
            case .head:
                return try parseHead()
            case .endPending:
                finishMessage()
                return .end
            case .body(let remaining):
                guard let chunk = takeBody(upTo: remaining) else { return nil }
                state = chunk.count == remaining ? .endPending : .body(remaining: remaining - chunk.count)
                return .body(chunk)
            case .chunkSize:
                guard let lineEnd = try findLineEnd(
                    from: readIndex, limit: 4096, what: "chunk size line", tooLong: .bad("chunk size line too long")) else {
                    return nil
                }
                let size = try parseChunkSize(readIndex..<lineEnd)
                readIndex = lineEnd + 2
                if size == 0 {
                    state = .trailers(bytes: 0)
                } else {
                    if size > limits.maxBodyBytes - bodyBytes { throw .bodyTooLarge }
                    bodyBytes += size
                    state = .chunkData(remaining: size)
                }
            case .chunkData(let remaining):
                guard let chunk = takeBody(upTo: remaining) else { return nil }
                state = chunk.count == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - chunk.count)
                return .body(chunk)
            case .chunkDataEnd:
                guard buffer.count - readIndex >= 2 else { return nil }
                guard buffer[readIndex] == 13 && buffer[readIndex + 1] == 10 else {
                    throw .bad("chunk data not followed by CRLF")
                }
                readIndex += 2
                state = .chunkSize
            case .trailers(let bytes):
                let budget = limits.maxHeadBytes - bytes
                guard let lineEnd = try findLineEnd(
                    from: readIndex, limit: budget, what: "trailer section", tooLong: .headTooLarge) else {
                    return nil
                }
                if lineEnd == readIndex {
                    readIndex += 2
                    finishMessage()
                    return .end
                }
                let line = readIndex..<lineEnd
                if buffer[line.lowerBound] == 32 || buffer[line.lowerBound] == 9 {
                    throw .bad("obsolete line folding in trailer")
                }
                _ = try parseField(line)
                state = .trailers(bytes: bytes + (lineEnd + 2 - readIndex))
                readIndex = lineEnd + 2
            }
        }
    }

    /// Up to `remaining` buffered body bytes, or nil when none are buffered.
    private mutating func takeBody(upTo remaining: Int) -> [UInt8]? {
        let n = min(buffer.count - readIndex, remaining)
        guard n > 0 else { return nil }
        defer { readIndex += n }
        return Array(buffer[readIndex..<readIndex + n])
    }

    private mutating func finishMessage() {
        state = .head
        bodyBytes = 0
        scanIndex = readIndex
    }

    /// Finds the CR of the next CRLF at or after `start`; a bare LF or CR is an error.
    private func findLineEnd(
        from start: Int, limit: Int, what: String, tooLong: HTTPParseError
    ) throws(HTTPParseError) -> Int? {
        var i = start
        let end = buffer.count
        while i < end {
            let b = buffer[i]
            if b == 10 {
                guard i > start, buffer[i - 1] == 13 else { throw .bad("bare LF in \(what)") }
                return i - 1
            }
            if b == 13, i + 1 < end, buffer[i + 1] != 10 { throw .bad("bare CR in \(what)") }
            if i - start >= limit { throw tooLong }
            i += 1
        }
        if end - start > limit { throw tooLong }
        return nil
    }

    private mutating func parseHead() throws(HTTPParseError) -> Event? {
        // Tolerate empty lines before a request line (RFC 9112 §2.2).
        while buffer.count - readIndex >= 2, buffer[readIndex] == 13, buffer[readIndex + 1] == 10 {
            readIndex += 2
        }
        if scanIndex < readIndex { scanIndex = readIndex }
        // Find the empty line that ends the head.
        var i = scanIndex
        let end = buffer.count
        var headEnd: Int? = nil
        while i < end {
            if buffer[i] == 10 {
                guard i > readIndex, buffer[i - 1] == 13 else { throw .bad("bare LF in request head") }
                if i - readIndex >= 3, buffer[i - 2] == 10 {
                    headEnd = i - 3  // index of the CR of the last header line's CRLF
                    break
                }
            }
            i += 1
        }
        guard let headEnd else {
            scanIndex = max(readIndex, end)
            if end - readIndex > limits.maxHeadBytes { throw .headTooLarge }
            return nil
        }
        let headBytes = headEnd + 4 - readIndex
        if headBytes > limits.maxHeadBytes { throw .headTooLarge }
        let head = try parseHeadLines(readIndex..<headEnd)
        readIndex = headEnd + 4
        scanIndex = readIndex
        switch head.bodyFraming {
        case .none, .contentLength(0): state = .endPending
        case .contentLength(let n): state = .body(remaining: n)
        case .chunked: state = .chunkSize
        }
        return .head(head)
    }

    private func parseHeadLines(_ range: Range<Int>) throws(HTTPParseError) -> HTTPRequestHead {
        // Split on CRLF; every LF is known to be preceded by CR.
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
        if lines.count - 1 > limits.maxHeaderCount { throw .headTooLarge }

        let (method, target, version) = try parseRequestLine(lines[0])
        var headers = HTTPHeaders()
        var hostCount = 0
        var contentLengths: [String] = []
        var transferEncodings: [String] = []
        for line in lines.dropFirst() {
            guard !line.isEmpty else { throw .bad("empty header line") }
            if buffer[line.lowerBound] == 32 || buffer[line.lowerBound] == 9 {
                throw .bad("obsolete line folding is not allowed")
            }
            let (name, value) = try parseField(line)
            if asciiCaseInsensitiveEquals(name, "host") {
                hostCount += 1
            } else if asciiCaseInsensitiveEquals(name, "content-length") {
                contentLengths.append(value)
            } else if asciiCaseInsensitiveEquals(name, "transfer-encoding") {
                transferEncodings.append(value)
            }
            headers.add(name: name, value: value)
        }

        if version == .http1_1 && hostCount == 0 { throw .bad("missing Host header") }
        if hostCount > 1 { throw .bad("more than one Host header") }

        var framing = HTTPRequestHead.BodyFraming.none
        if !transferEncodings.isEmpty {
            if !contentLengths.isEmpty { throw .bad("both Content-Length and Transfer-Encoding") }
            if version == .http1_0 { throw .bad("Transfer-Encoding in an HTTP/1.0 request") }
            var codings: [String] = []
            for value in transferEncodings {
                for part in value.split(separator: ",", omittingEmptySubsequences: false) {
                    codings.append(trimmedOWS(part).lowercased())
                }
            }
            if codings.contains(where: { $0 != "chunked" && !$0.isEmpty }) {
                throw HTTPParseError(status: 501, reason: "transfer coding not supported (only chunked)")
            }
            guard codings == ["chunked"] else { throw .bad("invalid Transfer-Encoding") }
            framing = .chunked
        } else if !contentLengths.isEmpty {
            var length: Int? = nil
            for value in contentLengths {
                for part in value.split(separator: ",", omittingEmptySubsequences: false) {
                    let digits = trimmedOWS(part)
                    guard !digits.isEmpty, digits.utf8.count <= 18, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                        let n = Int(digits)
                    else { throw .bad("invalid Content-Length") }
                    if let length, length != n { throw .bad("conflicting Content-Length values") }
                    length = n
                }
            }
            let n = length ?? 0
            if n > limits.maxBodyBytes { throw .bodyTooLarge }
            framing = .contentLength(n)
        }

        let keepAlive: Bool
        if version == .http1_1 {
            keepAlive = !headers.containsToken("close", in: "Connection")
        } else {
            keepAlive = headers.containsToken("keep-alive", in: "Connection")
                && !headers.containsToken("close", in: "Connection")
        }
        let expectsContinue = version == .http1_1 && (headers["Expect"].map {
            asciiCaseInsensitiveEquals(trimmedOWS($0), "100-continue")
        } ?? false)

        return HTTPRequestHead(
            method: method, target: target, version: version, headers: headers,
            keepAlive: keepAlive, bodyFraming: framing, expectsContinue: expectsContinue)
    }

    private func parseRequestLine(_ line: Range<Int>) throws(HTTPParseError) -> (String, String, HTTPVersion) {
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

    private func parseField(_ line: Range<Int>) throws(HTTPParseError) -> (String, String) {
        guard let colon = line.first(where: { buffer[$0] == 58 }) else { throw .bad("header line without colon") }
        let nameRange = line.lowerBound..<colon
        guard !nameRange.isEmpty else { throw .bad("empty header name") }
        for i in nameRange where !isTokenByte(buffer[i]) {
            throw buffer[i] == 32 || buffer[i] == 9
                ? .bad("whitespace before colon in header") : .bad("invalid character in header name")
        }
        var start = colon + 1
        var end = line.upperBound
        while start < end, buffer[start] == 32 || buffer[start] == 9 { start += 1 }
        while end > start, buffer[end - 1] == 32 || buffer[end - 1] == 9 { end -= 1 }
        for i in start..<end {
            let b = buffer[i]
            if (b < 32 && b != 9) || b == 127 { throw .bad("invalid character in header value") }
        }
        return (String(decoding: buffer[nameRange], as: UTF8.self), String(decoding: buffer[start..<end], as: UTF8.self))
    }

    private func parseChunkSize(_ line: Range<Int>) throws(HTTPParseError) -> Int {
        var size = 0
        var digits = 0
        var significantDigits = 0  // leading zeros are allowed and do not count
        var i = line.lowerBound
        while i < line.upperBound, let d = hexValue(buffer[i]) {
            digits += 1
            if significantDigits > 0 || d > 0 { significantDigits += 1 }
            if significantDigits > 15 { throw .bad("chunk size too large") }
            size = size * 16 + d
            i += 1
        }
        guard digits > 0 else { throw .bad("invalid chunk size") }
        // Optional chunk extensions: BWS ";" ... (ignored, but must be printable).
        while i < line.upperBound, buffer[i] == 32 || buffer[i] == 9 { i += 1 }
        if i < line.upperBound {
            guard buffer[i] == 59 else { throw .bad("invalid chunk size") }
            for j in i..<line.upperBound {
                let b = buffer[j]
                if (b < 32 && b != 9) || b == 127 { throw .bad("invalid chunk extension") }
            }
        }
        return size
    }
}

/// Drops the consumed front of an input buffer (everything before `readIndex`)
/// when that pays: at once when all is consumed, else once it is over half.
/// Returns how many bytes were dropped; read positions move down by as many.
public func compactConsumed(_ buffer: inout [UInt8], readIndex: Int) -> Int {
    if readIndex == buffer.count {
        buffer.removeAll(keepingCapacity: true)
        return readIndex
    }
    if readIndex > 8192 && readIndex * 2 > buffer.count {
        buffer.removeFirst(readIndex)
        return readIndex
    }
    return 0
}

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
