@testable import MiniHTTP

/// A request the parser must reject, and the status it must be answered with.
/// Shared by the parser tests and the server tests (which send each one over a socket).
struct MalformedCase: Sendable, CustomStringConvertible {
    let name: String
    let raw: [UInt8]
    let status: Int

    init(_ name: String, _ raw: String, _ status: Int) {
        self.name = name
        self.raw = Array(raw.utf8)
        self.status = status
    }

    var description: String { "\(name) → \(status)" }

    /// The limits these cases are written for: the default head limits, a small body limit.
    static let limits = HTTPParserLimits(maxHeadBytes: 16 * 1024, maxHeaderCount: 128, maxBodyBytes: 4096)

    static let all: [MalformedCase] = {
        let host = "Host: example.test\r\n"
        let bigValue = String(repeating: "a", count: 17_000)
        let manyHeaders = (0..<128).map { "X-H\($0): v\r\n" }.joined()
        let chunk = String(repeating: "c", count: 3000)
        let post = "POST /upload HTTP/1.1\r\n" + host
        let chunkedPost = post + "Transfer-Encoding: chunked\r\n\r\n"
        return [
            // Limits.
            MalformedCase("request line + headers over 16 KiB", "GET / HTTP/1.1\r\n\(host)X-Big: \(bigValue)\r\n\r\n", 431),
            MalformedCase("unterminated head over 16 KiB", "GET / HTTP/1.1\r\n\(host)X-Big: \(bigValue)", 431),
            MalformedCase("request line alone over 16 KiB", "GET /\(bigValue) HTTP/1.1\r\n\(host)\r\n", 431),
            MalformedCase("129 header fields", "GET / HTTP/1.1\r\n\(host)\(manyHeaders)\r\n", 431),
            MalformedCase("declared Content-Length over the body limit", post + "Content-Length: 4097\r\n\r\n", 413),
            MalformedCase(
                "chunked body accumulating over the body limit",
                chunkedPost + "bb8\r\n\(chunk)\r\nbb8\r\n\(chunk)\r\n0\r\n\r\n", 413),
            MalformedCase("single chunk over the body limit", chunkedPost + "1001\r\n", 413),
            MalformedCase("15-digit chunk size", chunkedPost + "fffffffffffffff\r\n", 413),
            // Request line.
            MalformedCase("request line with two tokens", "GET /\r\n\(host)\r\n", 400),
            MalformedCase("request line with one token", "GET\r\n\(host)\r\n", 400),
            MalformedCase("double space in request line", "GET  / HTTP/1.1\r\n\(host)\r\n", 400),
            MalformedCase("four tokens in request line", "GET / HTTP/1.1 x\r\n\(host)\r\n", 400),
            MalformedCase("empty method", " / HTTP/1.1\r\n\(host)\r\n", 400),
            MalformedCase("invalid character in method", "GE(T / HTTP/1.1\r\n\(host)\r\n", 400),
            MalformedCase("control character in target", "GET /a\u{01}b HTTP/1.1\r\n\(host)\r\n", 400),
            MalformedCase("non-ASCII target", "GET /ä HTTP/1.1\r\n\(host)\r\n", 400),
            MalformedCase("tab as request line separator", "GET\t/ HTTP/1.1\r\n\(host)\r\n", 400),
            // Header fields.
            MalformedCase("header line without colon", "GET / HTTP/1.1\r\n\(host)X-Foo bar\r\n\r\n", 400),
            MalformedCase("space before colon", "GET / HTTP/1.1\r\nHost : example.test\r\n\r\n", 400),
            MalformedCase("tab before colon", "GET / HTTP/1.1\r\n\(host)X-A\t: b\r\n\r\n", 400),
            MalformedCase("empty header name", "GET / HTTP/1.1\r\n\(host): x\r\n\r\n", 400),
            MalformedCase("invalid character in header name", "GET / HTTP/1.1\r\n\(host)X(A): b\r\n\r\n", 400),
            MalformedCase("obs-fold continuation line", "GET / HTTP/1.1\r\n\(host)X-A: b\r\n  c\r\n\r\n", 400),
            MalformedCase("obs-fold with tab", "GET / HTTP/1.1\r\n\(host)X-A: b\r\n\tc\r\n\r\n", 400),
            MalformedCase("NUL in header value", "GET / HTTP/1.1\r\n\(host)X-A: b\u{0}c\r\n\r\n", 400),
            MalformedCase("CR in header value", "GET / HTTP/1.1\r\n\(host)X-A: b\rc\r\n\r\n", 400),
            MalformedCase("LF in header value", "GET / HTTP/1.1\r\n\(host)X-A: b\nc\r\n\r\n", 400),
            MalformedCase("DEL in header value", "GET / HTTP/1.1\r\n\(host)X-A: b\u{7F}c\r\n\r\n", 400),
            MalformedCase("bare LF line endings", "GET / HTTP/1.1\nHost: example.test\n\n", 400),
            MalformedCase("bare LF ending the head", "GET / HTTP/1.1\r\n\(host)\n", 400),
            MalformedCase("bare LF before the request line", "\nGET / HTTP/1.1\r\n\(host)\r\n", 400),
            MalformedCase("missing Host in HTTP/1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
            MalformedCase("duplicate Host", "GET / HTTP/1.1\r\n\(host)host: other.test\r\n\r\n", 400),
            // Framing.
            MalformedCase(
                "Content-Length with Transfer-Encoding",
                post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
            MalformedCase(
                "Transfer-Encoding with Content-Length", post + "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
                400),
            MalformedCase(
                "differing duplicate Content-Length", post + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
            MalformedCase("Content-Length list 1, 2", post + "Content-Length: 1, 2\r\n\r\nab", 400),
            MalformedCase("non-numeric Content-Length", post + "Content-Length: abc\r\n\r\n", 400),
            MalformedCase("negative Content-Length", post + "Content-Length: -1\r\n\r\n", 400),
            MalformedCase("Content-Length with plus sign", post + "Content-Length: +3\r\n\r\nabc", 400),
            MalformedCase("hex Content-Length", post + "Content-Length: 0x10\r\n\r\n", 400),
            MalformedCase("empty Content-Length", post + "Content-Length: \r\n\r\n", 400),
            MalformedCase("Content-Length with trailing comma", post + "Content-Length: 3,\r\n\r\nabc", 400),
            MalformedCase("Content-Length of 20 digits", post + "Content-Length: 99999999999999999999\r\n\r\n", 400),
            MalformedCase("Transfer-Encoding gzip", post + "Transfer-Encoding: gzip\r\n\r\n", 501),
            MalformedCase("Transfer-Encoding gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
            MalformedCase(
                "Transfer-Encoding chunked twice", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400),
            MalformedCase("empty Transfer-Encoding", post + "Transfer-Encoding: \r\n\r\n", 400),
            MalformedCase(
                "Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            // Versions.
            MalformedCase("HTTP/2.0", "GET / HTTP/2.0\r\n\(host)\r\n", 505),
            MalformedCase("HTTP/1.2", "GET / HTTP/1.2\r\n\(host)\r\n", 505),
            MalformedCase("HTTP/0.9 style version", "GET / HTTP/0.9\r\n\(host)\r\n", 505),
            MalformedCase("garbage version", "GET / FOO/1.1\r\n\(host)\r\n", 400),
            MalformedCase("lower-case version", "GET / http/1.1\r\n\(host)\r\n", 400),
            MalformedCase("two-digit minor version", "GET / HTTP/1.10\r\n\(host)\r\n", 400),
            MalformedCase("version without minor", "GET / HTTP/1\r\n\(host)\r\n", 400),
            MalformedCase("version with letters", "GET / HTTP/x.y\r\n\(host)\r\n", 400),
            // Chunked framing.
            MalformedCase("non-hex chunk size", chunkedPost + "zz\r\nhello\r\n0\r\n\r\n", 400),
            MalformedCase("empty chunk size line", chunkedPost + "\r\nhello\r\n0\r\n\r\n", 400),
            MalformedCase("negative chunk size", chunkedPost + "-5\r\nhello\r\n0\r\n\r\n", 400),
            MalformedCase("chunk size overflowing 64 bits", chunkedPost + "10000000000000000\r\n", 400),
            MalformedCase("16-digit chunk size", chunkedPost + "ffffffffffffffff\r\n", 400),
            MalformedCase("junk after chunk size", chunkedPost + "5 x\r\nhello\r\n0\r\n\r\n", 400),
            MalformedCase("control character in chunk extension", chunkedPost + "5;a\u{01}b\r\nhello\r\n0\r\n\r\n", 400),
            MalformedCase("bare LF after chunk size", chunkedPost + "5\nhello\r\n0\r\n\r\n", 400),
            MalformedCase("chunk data not followed by CRLF", chunkedPost + "5\r\nhelloXY0\r\n\r\n", 400),
            MalformedCase(
                "chunk size line over 4 KiB", chunkedPost + "5;" + String(repeating: "e", count: 5000) + "\r\n", 400),
            MalformedCase("obs-fold in trailers", chunkedPost + "5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n", 400),
            MalformedCase("trailer without colon", chunkedPost + "5\r\nhello\r\n0\r\nX-T a\r\n\r\n", 400),
            MalformedCase(
                "trailer section over 16 KiB",
                chunkedPost + "5\r\nhello\r\n0\r\n" + (0..<200).map { "X-T\($0): \(String(repeating: "t", count: 90))\r\n" }.joined()
                    + "\r\n", 431),
        ]
    }()
}
