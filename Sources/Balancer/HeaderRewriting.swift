import MiniHTTP

/// How the balancer rewrites heads on the way through.
///
/// Hop-by-hop fields (RFC 9110 §7.6.1) are dropped both ways: `Connection`
/// and every field it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
/// `Upgrade`; `Transfer-Encoding` and `Content-Length` are dropped and set
/// again from the framing the balancer actually uses; `Expect` is answered by
/// the balancer itself.
enum HeaderRewriting {
    /// Whether a field must not be forwarded as is (no allocation: this runs for every field).
    static func isHopByHop(_ name: String, connectionTokens: [String]) -> Bool {
        for hop in hopByHopNames where asciiCaseInsensitiveEquals(name, hop) { return true }
        if name.utf8.count > 6, name.utf8.prefix(6).lazy.map(lowerASCII).elementsEqual("proxy-".utf8) { return true }
        return connectionTokens.contains { asciiCaseInsensitiveEquals(name, $0) }
    }

    private static let hopByHopNames = [
        "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length", "expect",
    ]

    /// The lowercased field names listed in `Connection`.
    static func connectionTokens(_ headers: HTTPHeaders) -> [String] {
        var tokens: [String] = []
        for value in headers.values(of: "Connection") {
            for part in value.split(separator: ",") {
                let token = part.trimmingCharacters(in: " \t").lowercased()
                if !token.isEmpty { tokens.append(token) }
            }
        }
        return tokens
    }

    /// The head to send to a backend (always HTTP/1.1, kept alive).
    static func requestHead(
        _ head: HTTPRequestHead, clientAddress: String, proto: String, defaultHost: String,
        makeRequestID: () -> String
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256 + head.headers.count * 40)
        out.append(contentsOf: head.method.utf8)
        out.append(32)
        out.append(contentsOf: head.target.utf8)
        out.append(contentsOf: " HTTP/1.1\r\n".utf8)
        let tokens = connectionTokens(head.headers)
        var forwardedFor: [String] = []
        var forwarded: [String] = []
        var requestID: String? = nil
        var hasHost = false
        for field in head.headers {
            if isHopByHop(field.name, connectionTokens: tokens) { continue }
            if asciiCaseInsensitiveEquals(field.name, "x-forwarded-for") {
                if !field.value.isEmpty { forwardedFor.append(field.value) }
                continue
            }
            if asciiCaseInsensitiveEquals(field.name, "forwarded") {
                if !field.value.isEmpty { forwarded.append(field.value) }
                continue
            }
            if asciiCaseInsensitiveEquals(field.name, "x-forwarded-proto") { continue }
            if asciiCaseInsensitiveEquals(field.name, "x-request-id") {
                if requestID == nil, isAcceptableRequestID(field.value) { requestID = field.value }
                continue
            }
            if asciiCaseInsensitiveEquals(field.name, "host") { hasHost = true }
            appendField(&out, field.name, field.value)
        }
        if !hasHost { appendField(&out, "Host", defaultHost) }
        // Built in place: these run for every request.
        out.append(contentsOf: "X-Forwarded-For: ".utf8)
        for earlier in forwardedFor {
            out.append(contentsOf: earlier.utf8)
            out.append(contentsOf: ", ".utf8)
        }
        out.append(contentsOf: clientAddress.utf8)
        out.append(contentsOf: "\r\nX-Forwarded-Proto: ".utf8)
        out.append(contentsOf: proto.utf8)
        out.append(contentsOf: "\r\nForwarded: ".utf8)
        for earlier in forwarded {
            out.append(contentsOf: earlier.utf8)
            out.append(contentsOf: ", ".utf8)
        }
        let bracketed = clientAddress.utf8.contains(58)  // IPv6: for="[::1]"
        out.append(contentsOf: (bracketed ? "for=\"[" : "for=").utf8)
        out.append(contentsOf: clientAddress.utf8)
        out.append(contentsOf: (bracketed ? "]\";proto=" : ";proto=").utf8)
        out.append(contentsOf: proto.utf8)
        out.append(contentsOf: "\r\n".utf8)
        appendField(&out, "X-Request-ID", requestID ?? makeRequestID())
        switch head.bodyFraming {
        case .none: break
        case .contentLength(let n): appendField(&out, "Content-Length", String(n))
        case .chunked: appendField(&out, "Transfer-Encoding", "chunked")
        }
        out.append(13)
        out.append(10)
        return out
    }

    /// A client's request ID is kept when it is short and printable.
    static func isAcceptableRequestID(_ value: String) -> Bool {
        (1...200).contains(value.utf8.count) && value.utf8.allSatisfy { $0 > 32 && $0 < 127 }
    }

    /// The head to send to the client, and how its body is framed.
    static func responseHead(
        _ head: HTTPResponseHead, clientVersion: HTTPVersion, keepAlive: Bool
    ) -> (bytes: [UInt8], framing: ProxyExchangeStateMachine.ClientFraming, keepAlive: Bool) {
        var framing = ProxyExchangeStateMachine.ClientFraming.asIs
        var keep = keepAlive
        var lengthField: String? = nil
        switch head.bodyFraming {
        case .none:
            // HEAD and 304 answers describe the body they would have had.
            if head.status >= 200 && head.status != 204 { lengthField = head.headers["Content-Length"] }
        case .contentLength(let n):
            lengthField = String(n)
        case .chunked, .untilClose:
            if clientVersion == .http1_1 {
                framing = .chunked
            } else {
                framing = .untilClose
                keep = false
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(256 + head.headers.count * 40)
        out.append(contentsOf: "HTTP/1.1 \(head.status) ".utf8)
        out.append(contentsOf: (head.reason.isEmpty ? reasonPhrase(head.status) : head.reason).utf8)
        out.append(13)
        out.append(10)
        let tokens = connectionTokens(head.headers)
        for field in head.headers where !isHopByHop(field.name, connectionTokens: tokens) {
            appendField(&out, field.name, field.value)
        }
        if let lengthField { appendField(&out, "Content-Length", lengthField) }
        if framing == .chunked { appendField(&out, "Transfer-Encoding", "chunked") }
        if !keep {
            appendField(&out, "Connection", "close")
        } else if clientVersion == .http1_0 {
            appendField(&out, "Connection", "keep-alive")
        }
        out.append(13)
        out.append(10)
        return (out, framing, keep)
    }

    /// Field names and values come from the parsers, which allow no CR, LF or NUL.
    static func appendField(_ out: inout [UInt8], _ name: String, _ value: String) {
        out.append(contentsOf: name.utf8)
        out.append(58)
        out.append(32)
        out.append(contentsOf: value.utf8)
        out.append(13)
        out.append(10)
    }

    /// Frames `bytes` as one chunk.
    static func appendChunk(_ out: inout OutputBuffer, _ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        out.append(contentsOf: String(bytes.count, radix: 16).utf8)
        out.append(contentsOf: [13, 10])
        out.append(bytes)
        out.append(contentsOf: [13, 10])
    }

    static let lastChunk: [UInt8] = Array("0\r\n\r\n".utf8)
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
