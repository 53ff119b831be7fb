import Testing

@testable import MiniHTTP
import SystemSupport

/// Every event of `bytes` fed in `chunks`, `finish()` included; stops at an error.
private func parseResponses(
    _ chunks: [ArraySlice<UInt8>], headFlags: [Bool] = [], finish: Bool = true
) -> (events: [HTTPResponseParser.Event], error: HTTPParseError?) {
    var parser = HTTPResponseParser(maxHeadBytes: 1024, maxHeaderCount: 16)
    var events: [HTTPResponseParser.Event] = []
    var finals = 0
    var pendingInterim = false
    func setFlag() { parser.expectResponse(toHEAD: finals < headFlags.count ? headFlags[finals] : false) }
    setFlag()
    func pull(_ parser: inout HTTPResponseParser) throws(HTTPParseError) {
        var guardCount = 0
        while let event = try parser.next() {
            events.append(event)
            if case .head(let h) = event { pendingInterim = h.isInterim }
            if case .end = event, !pendingInterim {
                finals += 1
                parser.expectResponse(toHEAD: finals < headFlags.count ? headFlags[finals] : false)
            }
            guardCount += 1
            if guardCount > 1_000_000 {
                Issue.record("parser loops")
                return
            }
        }
    }
    do throws(HTTPParseError) {
        for chunk in chunks {
            parser.append(chunk)
            try pull(&parser)
        }
        if finish {
            while let event = try parser.finish() { events.append(event) }
        }
    } catch {
        return (normalized(events), error)
    }
    return (normalized(events), nil)
}

private func one(_ text: String, toHEAD: Bool = false, finish: Bool = true) -> (
    events: [HTTPResponseParser.Event], error: HTTPParseError?
) {
    parseResponses([Array(text.utf8)[...]], headFlags: [toHEAD], finish: finish)
}

private func head(_ events: [HTTPResponseParser.Event], _ i: Int = 0) -> HTTPResponseHead? {
    events.compactMap { if case .head(let h) = $0 { h } else { nil } }.dropFirst(i).first
}

@Suite("HTTPResponseParser")
struct HTTPResponseParserTests {
    @Test func contentLengthBody() throws {
        let r = one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
        #expect(r.error == nil)
        let h = try #require(head(r.events))
        #expect(h.status == 200 && h.reason == "OK" && h.keepAlive && h.bodyFraming == .contentLength(5))
        #expect(h.headers["x-a"] == "b")
        #expect(Array(r.events.dropFirst()) == [.body(Array("hello".utf8)), .end])
    }

    @Test func chunkedBodyWithExtensionsAndTrailers() {
        let r = one("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n002\r\nde\r\n0\r\nT: 1\r\n\r\n")
        #expect(r.error == nil)
        #expect(head(r.events)?.bodyFraming == .chunked)
        #expect(Array(r.events.dropFirst()) == [.body(Array("abcde".utf8)), .end])
    }

    @Test func bodyUntilClose() {
        let r = one("HTTP/1.1 200 OK\r\n\r\nsome bytes")
        #expect(r.error == nil)
        #expect(head(r.events)?.bodyFraming == .untilClose)
        #expect(head(r.events)?.keepAlive == false)
        #expect(Array(r.events.dropFirst()) == [.body(Array("some bytes".utf8)), .end])
        let unfinished = one("HTTP/1.1 200 OK\r\n\r\nsome bytes", finish: false)
        #expect(unfinished.events.last == .body(Array("some bytes".utf8)), "no end before the close")
    }

    @Test func bodylessResponses() {
        for text in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        ] {
            let toHEAD = text.contains(" 200 ")
            let r = one(text, toHEAD: toHEAD)
            #expect(r.error == nil, "\(text)")
            #expect(head(r.events)?.bodyFraming == HTTPResponseHead.BodyFraming.none)
            #expect(r.events.count == 2)
        }
    }

    @Test func interimResponsesPrecedeTheFinalOne() {
        let r = one("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        #expect(r.error == nil)
        #expect(r.events.count == 7)
        #expect(head(r.events, 0)?.isInterim == true)
        #expect(head(r.events, 1)?.status == 103)
        #expect(head(r.events, 2)?.status == 200)
        #expect(r.events.last == .end)
    }

    @Test func keepAliveRules() {
        #expect(head(one("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").events)?.keepAlive == false)
        #expect(head(one("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").events)?.keepAlive == false)
        #expect(head(one("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").events)?.keepAlive == true)
        #expect(head(one("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").events)?.reason == "")
    }

    @Test(arguments: [
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 600 Odd\r\n\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\u{1}b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        "HTTP/1.1 200 OK\r\nContent-Le",
        "ICY 200 OK\r\n\r\n",
    ])
    func malformedResponsesAreErrors(_ text: String) {
        let r = one(text)
        #expect(r.error?.status == 502, "\(text.debugDescription)")
    }

    @Test func headLimit() {
        let big = "HTTP/1.1 200 OK\r\nX: \(String(repeating: "a", count: 2000))\r\n\r\n"
        #expect(one(big).error != nil)
    }

    @Test func resetStartsOver() throws {
        var parser = HTTPResponseParser()
        parser.append(Array("HTTP/1.1 200 OK\r\nContent-Len".utf8))
        #expect(try parser.next() == nil)
        parser.reset()
        parser.append(Array("HTTP/1.1 204 No Content\r\n\r\n".utf8))
        #expect(try parser.next() != nil)
        #expect(try parser.next() == .end)
        #expect(parser.isAtMessageBoundary)
    }
}

/// Generated response sequences fed whole and in random splits must give the
/// same events; mutated input must give events or an error, never a crash or a loop.
@Suite("HTTPResponseParser: randomized input")
struct HTTPResponseParserFuzzTests {
    struct Generated {
        var bytes: [UInt8] = []
        var heads: [Bool] = []  // per final response: answers a HEAD request
        var bodies: [[UInt8]] = []
        var statuses: [Int] = []
    }

    static func generate(_ rng: inout SplitMix64) -> Generated {
        var g = Generated()
        let count = 1 + rng.below(4)
        for i in 0..<count {
            if rng.chance(15) { g.bytes += Array("HTTP/1.1 100 Continue\r\n\r\n".utf8) }
            let toHEAD = rng.chance(10)
            let statuses = [200, 201, 204, 304, 404, 500]
            let status = statuses[rng.below(statuses.count)]
            var body: [UInt8] = []
            for _ in 0..<rng.below(40) { body.append(UInt8(truncatingIfNeeded: rng.next())) }
            let bodyless = toHEAD || status == 204 || status == 304
            let last = i == count - 1
            g.bytes += Array("HTTP/1.\(rng.chance(10) ? 0 : 1) \(status) \(reasonPhrase(status))\r\n".utf8)
            if rng.chance(50) { g.bytes += Array("X-Thing: v\(rng.below(99))\r\n".utf8) }
            let style = rng.below(last ? 3 : 2)  // until-close only for the last
            switch style {
            case 0:
                g.bytes += Array("Content-Length: \(body.count)\r\n".utf8)
                g.bytes += Array("Connection: keep-alive\r\n\r\n".utf8)
                if !bodyless { g.bytes += body }
            case 1:
                g.bytes += Array("Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n".utf8)
                if !bodyless {
                    var offset = 0
                    while offset < body.count {
                        let n = min(1 + rng.below(9), body.count - offset)
                        g.bytes += Array("\(String(n, radix: 16))\r\n".utf8) + body[offset..<offset + n] + [13, 10]
                        offset += n
                    }
                    g.bytes += Array("0\r\n\r\n".utf8)
                }
            default:
                g.bytes += Array("\r\n".utf8)
                if !bodyless { g.bytes += body }
            }
            g.heads.append(toHEAD)
            g.bodies.append(bodyless ? [] : body)
            g.statuses.append(status)
        }
        return g
    }

    static func finalBodies(_ events: [HTTPResponseParser.Event]) -> ([Int], [[UInt8]]) {
        var statuses: [Int] = []
        var bodies: [[UInt8]] = []
        var current: [UInt8]? = nil
        for event in events {
            switch event {
            case .head(let h):
                current = h.isInterim ? nil : []
                if !h.isInterim { statuses.append(h.status) }
            case .body(let b): current?.append(contentsOf: b)
            case .end:
                if let c = current { bodies.append(c) }
                current = nil
            }
        }
        return (statuses, bodies)
    }

    @Test func validSequencesParseTheSameInAnySplit() {
        var rng = SplitMix64(seed: 0x5EED_0001)
        for _ in 0..<1_500 {
            let g = Self.generate(&rng)
            let whole = parseResponses([g.bytes[...]], headFlags: g.heads)
            #expect(whole.error == nil)
            let (statuses, bodies) = Self.finalBodies(whole.events)
            #expect(statuses == g.statuses)
            #expect(bodies == g.bodies)
            let split = parseResponses(randomChunks(g.bytes, cuts: 1 + rng.below(12), rng: &rng), headFlags: g.heads)
            #expect(split.events == whole.events)
            #expect(split.error == nil)
            let bytewise = parseResponses(g.bytes.indices.map { g.bytes[$0..<$0 + 1] }, headFlags: g.heads)
            #expect(bytewise.events == whole.events)
        }
    }

    @Test func mutatedInputNeverCrashes() {
        var rng = SplitMix64(seed: 0x5EED_0002)
        let special: [UInt8] = [13, 10, 32, 9, 58, 59, 0, 48, 102, 44, 127, 255, 72, 45]
        for _ in 0..<3_000 {
            var bytes = Self.generate(&rng).bytes
            for _ in 0..<(1 + rng.below(4)) where !bytes.isEmpty {
                let i = rng.below(bytes.count)
                switch rng.below(3) {
                case 0: bytes[i] = special[rng.below(special.count)]
                case 1: bytes.remove(at: i)
                default: bytes.insert(special[rng.below(special.count)], at: i)
                }
            }
            let whole = parseResponses([bytes[...]])
            if let error = whole.error { #expect(error.status == 502) }
            let split = parseResponses(randomChunks(bytes, cuts: 1 + rng.below(8), rng: &rng))
            #expect(split.events == whole.events)
            #expect(split.error == whole.error)
        }
    }
}
