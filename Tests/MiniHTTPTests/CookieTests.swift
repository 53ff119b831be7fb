import Testing

@testable import MiniHTTP
import SystemSupport

@Suite("Cookies")
struct CookieTests {
    func pairs(_ header: String) -> [String] {
        parseCookieHeader(header).map { "\($0.name)=\($0.value)" }
    }

    @Test func parsesPairsSeparatedBySemicolonAndSpace() {
        #expect(pairs("a=1; b=2; session=abc") == ["a=1", "b=2", "session=abc"])
    }

    @Test func toleratesMissingAndExtraSpaces() {
        #expect(pairs("a=1;b=2") == ["a=1", "b=2"])
        #expect(pairs("  a = 1 ;   b=2  ;") == ["a=1", "b=2"])
        #expect(pairs("a=1;\tb=2") == ["a=1", "b=2"])
        #expect(pairs("a=hello world") == ["a=hello world"], "inner spaces are kept")
    }

    @Test func removesSurroundingDoubleQuotes() {
        #expect(pairs("a=\"quoted\"; b=\"\"; c=\"; d=\"x") == ["a=quoted", "b=", "c=\"", "d=\"x"])
    }

    @Test func keepsEqualsSignsAndEmptyValues() {
        #expect(pairs("token=abc==; empty=") == ["token=abc==", "empty="])
    }

    @Test func skipsMalformedPairs() {
        #expect(pairs("novalue; =nameless; a=1; ;; b c=2; d(e)=3; f=4") == ["a=1", "f=4"])
        #expect(pairs("").isEmpty)
        #expect(pairs(";;;").isEmpty)
    }

    @Test func keepsDuplicatesInOrder() {
        #expect(pairs("id=first; id=second") == ["id=first", "id=second"])
    }

    @Test func requestCookieLooksAcrossMultipleCookieHeaders() {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "a")
        headers.add(name: "Cookie", value: "a=1; dup=one")
        headers.add(name: "cookie", value: "b=2; dup=two")
        let request = HTTPRequest(method: "GET", target: "/", headers: headers)
        #expect(request.cookie("a") == "1")
        #expect(request.cookie("b") == "2")
        #expect(request.cookie("dup") == "one", "the first occurrence wins")
        #expect(request.cookie("missing") == nil)
        #expect(request.cookie("A") == nil, "cookie names are case-sensitive")
    }

    @Test func cookieFromParsedRequest() throws {
        let outcome = parse("GET / HTTP/1.1\r\nHost: a\r\nCookie: sid=\"xyz\"\r\nCookie: theme=dark\r\n\r\n")
        let head = try #require(heads(outcome.events).first)
        let request = HTTPRequest(head: head)
        #expect(request.cookie("sid") == "xyz")
        #expect(request.cookie("theme") == "dark")
    }
}

@Suite("HTTPResponseSerializer")
struct SerializerTests {
    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test func serializesStatusHeadersContentLengthAndBody() {
        let response = HTTPResponse(status: 200, headers: ["Content-Type": "text/plain", "X-A": "b"], body: bytes("hello"))
        #expect(
            text(HTTPResponseSerializer.serialize(response, keepAlive: true))
                == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: b\r\nContent-Length: 5\r\n\r\nhello")
    }

    @Test func emptyBodyHasContentLengthZero() {
        #expect(
            text(HTTPResponseSerializer.serialize(HTTPResponse(status: 404), keepAlive: true))
                == "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    }

    @Test func connectionCloseWhenNotKeepAlive() {
        let out = text(HTTPResponseSerializer.serialize(.text("x"), keepAlive: false))
        #expect(out.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(out.contains("\r\nConnection: close\r\n"))
        #expect(out.hasSuffix("\r\n\r\nx"))
    }

    @Test func http10KeepAliveIsExplicit() {
        let out = text(HTTPResponseSerializer.serialize(.text("x"), keepAlive: true, version: .http1_0))
        #expect(out.hasPrefix("HTTP/1.0 200 OK\r\n"))
        #expect(out.contains("\r\nConnection: keep-alive\r\n"))
        let closing = text(HTTPResponseSerializer.serialize(.text("x"), keepAlive: false, version: .http1_0))
        #expect(closing.contains("\r\nConnection: close\r\n"))
        #expect(!closing.contains("keep-alive"))
    }

    @Test func headOmitsBodyButKeepsContentLength() {
        let out = text(HTTPResponseSerializer.serialize(.text("hello"), keepAlive: true, headOnly: true))
        #expect(out.contains("\r\nContent-Length: 5\r\n"))
        #expect(out.hasSuffix("\r\n\r\n"))
        #expect(!out.contains("hello"))
    }

    @Test(arguments: [204, 304, 100])
    func bodylessStatusesHaveNoContentLengthAndNoBody(status: Int) {
        let response = HTTPResponse(status: status, headers: ["X-A": "b"], body: bytes("ignored"))
        let out = text(HTTPResponseSerializer.serialize(response, keepAlive: true))
        #expect(out == "HTTP/1.1 \(status) \(reasonPhrase(status))\r\nX-A: b\r\n\r\n")
    }

    @Test func handlerFramingHeadersAreReplaced() {
        let response = HTTPResponse(
            status: 200,
            headers: [
                "content-length": "999", "Connection": "keep-alive", "Transfer-Encoding": "chunked", "X-Keep": "yes",
                // The lengths of the framing names, other names: kept.
                "Keep-Alive": "timeout=5", "Content-Lengtx": "x", "Transfer-Encodinx": "y",
            ], body: bytes("abc"))
        let out = text(HTTPResponseSerializer.serialize(response, keepAlive: false))
        #expect(
            out == "HTTP/1.1 200 OK\r\nX-Keep: yes\r\nKeep-Alive: timeout=5\r\nContent-Lengtx: x\r\nTransfer-Encodinx: y\r\n"
                + "Content-Length: 3\r\nConnection: close\r\n\r\nabc")
    }

    @Test func crLfAndNulInHeaderValuesAreNeutralized() {
        let response = HTTPResponse(
            status: 200, headers: ["X-Evil": "a\r\nSet-Cookie: injected=1\r\n\r\nbody", "X-Nul": "a\u{0}b"], body: [])
        let out = text(HTTPResponseSerializer.serialize(response, keepAlive: true))
        #expect(out.contains("X-Evil: a  Set-Cookie: injected=1    body\r\n"))
        #expect(out.contains("X-Nul: a b\r\n"))
        let lines = crlfLines(out)
        #expect(!lines.contains { $0.hasPrefix("Set-Cookie") }, "no header line was injected")
        #expect(lines.filter { $0.isEmpty }.count == 2, "exactly one empty line ends the head (plus the empty body)")
    }

    /// HTTPResponseSerializer.swift, `appendField`: only the value is
    /// sanitized; a header *name* is written as is, so CR/LF in a name (e.g.
    /// one built from request data) splits the head and injects fields.
    @Test
    func crLfInHeaderNamesCannotSplitTheHead() {
        let response = HTTPResponse(status: 200, headers: ["X-A\r\nSet-Cookie: injected=1\r\nX-B": "v"], body: [])
        let lines = crlfLines(String(decoding: HTTPResponseSerializer.serialize(response, keepAlive: true), as: UTF8.self))
        #expect(!lines.contains { $0.hasPrefix("Set-Cookie") }, "a header name injected a Set-Cookie line: \(lines)")
    }

    @Test func reasonPhrases() {
        #expect(reasonPhrase(413) == "Content Too Large")
        #expect(reasonPhrase(431) == "Request Header Fields Too Large")
        #expect(reasonPhrase(505) == "HTTP Version Not Supported")
        #expect(reasonPhrase(599) == "Status 599")
    }

    @Test func errorResponseIsQuotedJSON() {
        let response = HTTPResponse.error(status: 400, code: "bad", message: "a \"quote\"\n\\ \u{1}")
        #expect(response.status == 400)
        #expect(response.headers["Content-Type"] == "application/json")
        #expect(text(response.body) == #"{"error":"bad","message":"a \"quote\"\n\\ \u0001"}"#)
    }
}

@Suite("Request.cookie fast path")
struct CookieLookupTests {
    /// The byte scanner behind `HTTPRequest.cookie` must agree with `parseCookieHeader`.
    @Test func agreesWithTheParserOnRandomHeaders() {
        var rng = SplitMix64(seed: 0xC00C1E)
        let alphabet = Array("ab=; \t\"xé1".unicodeScalars)
        for _ in 0..<20_000 {
            var header = ""
            for _ in 0..<rng.below(24) { header.unicodeScalars.append(alphabet[rng.below(alphabet.count)]) }
            for name in ["a", "b", "ab", "x"] {
                let expected = parseCookieHeader(header).first { $0.name == name }?.value
                let request = HTTPRequest(method: "GET", target: "/", headers: ["Host": "h", "Cookie": header])
                #expect(request.cookie(name) == expected, "header \(header.debugDescription), name \(name)")
            }
        }
    }
}

@Suite("HTTPHeaders lookup")
struct HeaderLookupTests {
    @Test func namesCompareWithoutASCIICaseOnly() {
        #expect(asciiCaseInsensitiveEquals("Cookie", "cOOKIE"))
        #expect(asciiCaseInsensitiveEquals("x-a-much-longer-header-name", "X-A-Much-Longer-Header-Name"))
        #expect(!asciiCaseInsensitiveEquals("Cookie", "Cookies"))
        #expect(!asciiCaseInsensitiveEquals("Cookie", "Cookid"))
        // Only A-Z fold: '@' (0x40) and '`' (0x60) differ by the case bit and are not letters.
        #expect(!asciiCaseInsensitiveEquals("a@", "a`"))
        #expect(!asciiCaseInsensitiveEquals("é", "É"), "non-ASCII letters do not fold")
        #expect(asciiCaseInsensitiveEquals("", ""))
    }

    @Test func firstValueLooksAtEveryFieldOfTheNameInOrder() {
        let headers: HTTPHeaders = HTTPHeaders([("Cookie", "a=1"), ("Host", "h"), ("cookie", "b=2; a=3"), ("COOKIE", "b=4")])
        #expect(headers["cookie"] == "a=1")
        #expect(headers.firstValue(of: "Cookie") { findCookie("b", in: $0) } == "2", "the first field without it is skipped")
        #expect(headers.firstValue(of: "Cookie") { findCookie("z", in: $0) } == nil)
        #expect(headers.contains(name: "HOST"))
        #expect(!headers.contains(name: "Hos"))
        let request = HTTPRequest(method: "GET", target: "/", headers: headers)
        #expect(request.cookie("b") == "2")
        #expect(request.cookie("a") == "1")
    }
}
