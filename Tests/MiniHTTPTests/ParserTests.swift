import Testing

@testable import MiniHTTP
import SystemSupport

@Suite("HTTPRequestParser: valid requests")
struct ParserTests {
    @Test func simpleGetYieldsHeadAndEnd() throws {
        let outcome = parse("GET /path/to?x=1&y=2 HTTP/1.1\r\nHost: example.test\r\nAccept:  text/html \t\r\n\r\n")
        #expect(outcome.error == nil)
        try #require(outcome.events.count == 2)
        guard case .head(let head) = outcome.events[0] else {
            Issue.record("first event is not a head: \(outcome.events[0])")
            return
        }
        #expect(head.method == "GET")
        #expect(head.target == "/path/to?x=1&y=2")
        #expect(head.path == "/path/to")
        #expect(head.query == "x=1&y=2")
        #expect(head.version == .http1_1)
        #expect(head.headers["host"] == "example.test")
        #expect(head.headers["ACCEPT"] == "text/html", "OWS around the value is trimmed")
        #expect(head.headers.count == 2)
        #expect(head.bodyFraming == .none)
        #expect(head.keepAlive)
        #expect(!head.expectsContinue)
        #expect(outcome.events[1] == .end)
    }

    @Test func thePathFollowsAChangedTarget() {
        var head = HTTPRequestHead(method: "GET", target: "/a?x=1")
        #expect(head.path == "/a")
        head.target = "/b/c"
        #expect(head.path == "/b/c", "the path is split again when the target changes")
        head.target = "/d?"
        #expect(head.path == "/d")
        #expect(head.query == "")
    }

    @Test func nextReturnsNilUntilTheHeadIsComplete() throws {
        var parser = HTTPRequestParser()
        #expect(parser.isAtMessageBoundary)
        parser.append(bytes("GET / HTTP/1.1\r\nHost: a\r\n"))
        #expect(try parser.next() == nil)
        #expect(!parser.isAtMessageBoundary)
        #expect(try parser.next() == nil, "asking again without input changes nothing")
        parser.append(bytes("\r\n"))
        let event = try parser.next()
        guard case .head(let head)? = event else {
            Issue.record("expected a head, got \(String(describing: event))")
            return
        }
        #expect(head.target == "/")
        #expect(try parser.next() == .end)
        #expect(try parser.next() == nil)
        #expect(parser.isAtMessageBoundary)
        #expect(parser.bufferedByteCount == 0)
    }

    @Test func contentLengthBodyIsDeliveredIncrementally() throws {
        var parser = HTTPRequestParser()
        parser.append(bytes("POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello"))
        guard case .head(let head)? = try parser.next() else {
            Issue.record("expected a head")
            return
        }
        #expect(head.bodyFraming == .contentLength(11))
        #expect(try parser.next() == .body(bytes("hello")))
        #expect(try parser.next() == nil)
        #expect(!parser.isAtMessageBoundary, "in the middle of a body")
        parser.append(bytes(" world"))
        #expect(try parser.next() == .body(bytes(" world")))
        #expect(try parser.next() == .end)
        #expect(try parser.next() == nil)
        #expect(parser.isAtMessageBoundary)
    }

    @Test func contentLengthZeroAndDuplicateEqualValuesAreAccepted() throws {
        let zero = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        #expect(zero.error == nil)
        #expect(heads(zero.events).first?.bodyFraming == .contentLength(0))
        #expect(zero.events.last == .end)
        #expect(zero.events.count == 2)

        let same = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc")
        #expect(same.error == nil)
        #expect(heads(same.events).first?.bodyFraming == .contentLength(3))
        #expect(bodies(same.events) == [bytes("abc")])
    }

    @Test func chunkedBodyWithExtensionsAndTrailers() throws {
        let raw = "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\n"
            + "6 ; ext ; other=\"quoted\"\r\n world\r\n"
            + "A\r\n0123456789\r\n"
            + "0;last=1\r\nX-Trailer: t\r\nX-Other: o\r\n\r\n"
        let outcome = parse(raw)
        #expect(outcome.error == nil)
        let head = try #require(heads(outcome.events).first)
        #expect(head.bodyFraming == .chunked)
        #expect(bodies(outcome.events) == [bytes("hello world0123456789")])
        #expect(outcome.events.last == .end)
        #expect(!head.headers.contains(name: "X-Trailer"), "trailers are not merged into the head")
    }

    @Test func chunkedBodyWithoutTrailersAndUpperCaseHex() throws {
        let body = String(repeating: "z", count: 0xAB)
        let outcome = parse("PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nAB\r\n\(body)\r\n0\r\n\r\n")
        #expect(outcome.error == nil)
        #expect(bodies(outcome.events) == [bytes(body)])
    }

    @Test func chunkSizeLeadingZerosAreAllowed() throws {
        let outcome = parse("PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "00000000000000000005\r\nhello\r\n0000\r\n\r\n")
        #expect(outcome.error == nil)
        #expect(bodies(outcome.events) == [bytes("hello")])
        let tooBig = parse("PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n")
        #expect(tooBig.error?.status == 400)
    }

    @Test func headRequestHasNoBody() throws {
        let outcome = parse("HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(outcome.error == nil)
        let hs = heads(outcome.events)
        #expect(hs.map(\.method) == ["HEAD", "GET"])
        #expect(hs.first?.bodyFraming == HTTPRequestHead.BodyFraming.none)
        #expect(outcome.events.count == 4)
        #expect(bodies(outcome.events) == [[], []])
    }

    @Test func http10RequestNeedsNoHost() throws {
        let outcome = parse("GET /old HTTP/1.0\r\n\r\n")
        #expect(outcome.error == nil)
        let head = try #require(heads(outcome.events).first)
        #expect(head.version == .http1_0)
        #expect(!head.keepAlive)
    }

    @Test func emptyLinesBeforeARequestAreIgnored() throws {
        let outcome = parse("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(outcome.error == nil)
        #expect(heads(outcome.events).map(\.target) == ["/", "/2"])

        var parser = HTTPRequestParser()
        parser.append(bytes("\r\n\r\n"))
        #expect(try parser.next() == nil)
        #expect(parser.isAtMessageBoundary, "only empty lines buffered")
    }

    @Test func pipelinedRequestsInOneBuffer() throws {
        let raw = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            + "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            + "POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
            + "HEAD /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        let outcome = parse(raw)
        #expect(outcome.error == nil)
        let events = normalized(outcome.events)
        let hs = heads(events)
        #expect(hs.map(\.target) == ["/1", "/2", "/3", "/4"])
        #expect(hs.map(\.keepAlive) == [true, true, true, false])
        #expect(bodies(events) == [[], bytes("abc"), bytes("xy"), []])
        // Strict shape: head, optional body, end — four times.
        var shape = ""
        for e in events {
            switch e {
            case .head: shape += "H"
            case .body: shape += "B"
            case .end: shape += "E"
            }
        }
        #expect(shape == "HEHBEHBEHE")
    }

    @Test func pipelinedRequestsSplitAcrossBuffers() throws {
        let raw = bytes(
            "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nwxyzGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        // Every single split point, so request boundaries fall inside heads, bodies and CRLFs.
        let whole = normalized(parse(raw).events)
        #expect(heads(whole).map(\.target) == ["/1", "/2", "/3"])
        for cut in 1..<raw.count {
            let split = parse(chunks: [raw[0..<cut], raw[cut...]])
            #expect(split.error == nil, "cut at \(cut)")
            #expect(normalized(split.events) == whole, "cut at \(cut)")
        }
    }

    @Test func largeBodiesAcrossManyAppendsSurviveBufferCompaction() throws {
        // Bodies over 8 KiB make the parser compact its buffer mid-stream.
        var rng = SplitMix64(seed: 7)
        var raw: [UInt8] = []
        var expectedBodies: [[UInt8]] = []
        for i in 0..<4 {
            let body = (0..<(9_000 + i * 3_000)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            expectedBodies.append(body)
            if i % 2 == 0 {
                raw += bytes("POST /\(i) HTTP/1.1\r\nHost: a\r\nContent-Length: \(body.count)\r\n\r\n") + body
            } else {
                raw += bytes("POST /\(i) HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                var rest = body[...]
                while !rest.isEmpty {
                    let n = min(rest.count, 1 + rng.below(5_000))
                    raw += bytes(String(n, radix: 16) + "\r\n") + rest.prefix(n) + bytes("\r\n")
                    rest = rest.dropFirst(n)
                }
                raw += bytes("0\r\n\r\n")
            }
        }
        for round in 0..<5 {
            let outcome = parse(chunks: randomChunks(raw, cuts: 3 + round * 40, rng: &rng))
            #expect(outcome.error == nil)
            #expect(heads(outcome.events).map(\.target) == ["/0", "/1", "/2", "/3"])
            #expect(bodies(outcome.events) == expectedBodies)
        }
    }

    @Test(arguments: [
        ("HTTP/1.1", [], true),
        ("HTTP/1.1", ["Connection: close"], false),
        ("HTTP/1.1", ["Connection: CLOSE"], false),
        ("HTTP/1.1", ["Connection: keep-alive, close"], false),
        ("HTTP/1.1", ["Connection: Upgrade", "Connection: close"], false),
        ("HTTP/1.1", ["Connection: keep-alive"], true),
        ("HTTP/1.1", ["Connection: closed"], true),
        ("HTTP/1.0", [], false),
        ("HTTP/1.0", ["Connection: keep-alive"], true),
        ("HTTP/1.0", ["Connection: Keep-Alive"], true),
        ("HTTP/1.0", ["Connection: keep-alive, close"], false),
        ("HTTP/1.0", ["Connection: close"], false),
    ] as [(String, [String], Bool)])
    func keepAliveRules(version: String, headers: [String], expected: Bool) throws {
        let fields = headers.map { $0 + "\r\n" }.joined()
        let outcome = parse("GET / \(version)\r\nHost: a\r\n\(fields)\r\n")
        #expect(outcome.error == nil)
        let head = try #require(heads(outcome.events).first)
        #expect(head.keepAlive == expected)
    }

    @Test(arguments: [
        ("HTTP/1.1", "Expect: 100-continue", true),
        ("HTTP/1.1", "Expect: 100-Continue ", true),
        ("HTTP/1.1", "X-None: 1", false),
        ("HTTP/1.1", "Expect: something-else", false),
        ("HTTP/1.0", "Expect: 100-continue", false),
    ])
    func expectContinueFlag(version: String, headers: String, expected: Bool) throws {
        let outcome = parse("POST / \(version)\r\nHost: a\r\nContent-Length: 2\r\n\(headers)\r\n\r\nok")
        #expect(outcome.error == nil)
        let head = try #require(heads(outcome.events).first)
        #expect(head.expectsContinue == expected)
        #expect(bodies(outcome.events) == [bytes("ok")])
    }
}

@Suite("HTTPRequestParser: split feeding")
struct ParserSplitTests {
    static let corpus: [String] = [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /search?q=a%20b&x=%22 HTTP/1.1\r\nHost: example.test:8080\r\nAccept: */*\r\nX-Tab:\tv\t\r\nCookie: a=1; b=2\r\n\r\n",
        "POST /form HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!",
        "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;a=b\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",
        "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "\r\n\r\nHEAD /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n12345"
            + "PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            + "DELETE /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n" + String(repeating: "0123456789", count: 2000),
        "GET /partial HTTP/1.1\r\nHost: a\r\n\r\nPOST /incomplete HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    ]

    @Test(arguments: corpus.indices)
    func byteByByteMatchesWhole(index: Int) throws {
        let raw = bytes(Self.corpus[index])
        let whole = parse(raw)
        #expect(whole.error == nil)
        #expect(!whole.events.isEmpty)
        let single = parseByteByByte(raw)
        #expect(single.error == nil)
        #expect(normalized(single.events) == normalized(whole.events))
    }

    @Test(arguments: corpus.indices)
    func randomSplitsMatchWhole(index: Int) throws {
        let raw = bytes(Self.corpus[index])
        let expected = normalized(parse(raw).events)
        var rng = SplitMix64(seed: 0xC0FFEE &+ UInt64(index))
        for _ in 0..<300 {
            let chunks = randomChunks(raw, cuts: 1 + rng.below(min(raw.count, 40)), rng: &rng)
            let outcome = parse(chunks: chunks)
            #expect(outcome.error == nil)
            #expect(normalized(outcome.events) == expected, "chunks: \(chunks.map(\.count))")
        }
    }
}

@Suite("HTTPRequestParser: limits and malformed input")
struct ParserErrorTests {
    @Test(arguments: MalformedCase.all)
    func malformedRequestMapsToStatus(_ testCase: MalformedCase) throws {
        let limits = MalformedCase.limits
        let whole = parse(testCase.raw, limits: limits)
        let error = try #require(whole.error, "whole input must be rejected")
        #expect(error.status == testCase.status, "\(error)")
        #expect(!error.reason.isEmpty)
        #expect([400, 413, 431, 501, 505].contains(error.status))

        let single = parseByteByByte(testCase.raw, limits: limits)
        #expect(single.error?.status == testCase.status, "byte by byte: \(String(describing: single.error))")

        var rng = SplitMix64(seed: UInt64(testCase.raw.count))
        for _ in 0..<5 {
            let split = parse(chunks: randomChunks(testCase.raw, cuts: 1 + rng.below(20), rng: &rng), limits: limits)
            #expect(split.error?.status == testCase.status, "random split: \(String(describing: split.error))")
        }
    }

    @Test(arguments: MalformedCase.all)
    func errorIsSticky(_ testCase: MalformedCase) throws {
        var parser = HTTPRequestParser(limits: MalformedCase.limits)
        parser.append(testCase.raw)
        var first: HTTPParseError? = nil
        var pulled = 0
        while first == nil && pulled < 1000 {
            do {
                guard try parser.next() != nil else { break }
            } catch {
                first = error
            }
            pulled += 1
        }
        let error = try #require(first)
        for attempt in 0..<3 {
            #expect(throws: error, "attempt \(attempt)") { try parser.next() }
        }
        parser.append(bytes("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        #expect(throws: error, "a valid request appended after the error changes nothing") { try parser.next() }
    }

    @Test func headSizeLimitIsExact() throws {
        let prefix = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: "
        let suffix = "\r\n\r\n"
        func request(totalBytes: Int) -> [UInt8] {
            bytes(prefix + String(repeating: "p", count: totalBytes - prefix.utf8.count - suffix.utf8.count) + suffix)
        }
        let atLimit = request(totalBytes: 16 * 1024)
        #expect(atLimit.count == 16_384)
        #expect(parse(atLimit).error == nil)
        #expect(parseByteByByte(atLimit).error == nil)
        #expect(parse(request(totalBytes: 16 * 1024 + 1)).error?.status == 431)
        #expect(parseByteByByte(request(totalBytes: 16 * 1024 + 1)).error?.status == 431)

        let small = HTTPParserLimits(maxHeadBytes: 100)
        #expect(parse(request(totalBytes: 100), limits: small).error == nil)
        #expect(parse(request(totalBytes: 101), limits: small).error?.status == 431)
    }

    @Test func headerCountLimitIsExact() throws {
        func request(fields: Int) -> String {
            "GET / HTTP/1.1\r\nHost: a\r\n" + (1..<fields).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        }
        #expect(parse(request(fields: 128)).error == nil)
        #expect(parse(request(fields: 129)).error?.status == 431)
        let three = HTTPParserLimits(maxHeaderCount: 3)
        #expect(parse(request(fields: 3), limits: three).error == nil)
        #expect(parse(request(fields: 4), limits: three).error?.status == 431)
    }

    @Test func contentLengthLimitIsExact() throws {
        let max = HTTPParserLimits().maxBodyBytes
        #expect(max == 1 << 20)
        let ok = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \(max)\r\n\r\n")
        #expect(ok.error == nil)
        #expect(heads(ok.events).first?.bodyFraming == .contentLength(max))
        let tooBig = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \(max + 1)\r\n\r\n")
        #expect(tooBig.error?.status == 413)
        #expect(tooBig.events.isEmpty, "no head is delivered for a body that is too large")
    }

    @Test func chunkedLimitCountsAccumulatedBytes() throws {
        let limits = HTTPParserLimits(maxBodyBytes: 10)
        let prefix = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        let exactly = parse(prefix + "4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n", limits: limits)
        #expect(exactly.error == nil)
        #expect(bodies(exactly.events) == [bytes("abcdefghij")])

        let over = parse(prefix + "4\r\nabcd\r\n6\r\nefghij\r\n1\r\nk\r\n0\r\n\r\n", limits: limits)
        #expect(over.error?.status == 413)
        let delivered = over.events.reduce(0) { n, e in if case .body(let b) = e { n + b.count } else { n } }
        #expect(delivered <= 10)

        // The body limit applies per message, not per connection.
        let twice = parse(
            prefix + "a\r\n0123456789\r\n0\r\n\r\n" + prefix + "a\r\n0123456789\r\n0\r\n\r\n", limits: limits)
        #expect(twice.error == nil)
        #expect(bodies(twice.events).count == 2)
    }

    @Test func http10WithoutHostAndHttp11WithHostCaseInsensitive() throws {
        #expect(parse("GET / HTTP/1.1\r\nhOsT: a\r\n\r\n").error == nil)
        #expect(parse("GET / HTTP/1.0\r\n\r\n").error == nil)
        #expect(parse("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").error?.status == 400)
    }
}
