import Testing

@testable import MiniHTTP
import SystemSupport

/// Generates valid requests, mutates them, and feeds them to the parser whole
/// and in random splits, checking invariants that must hold for any input.
@Suite("HTTPRequestParser: randomized input")
struct ParserFuzzTests {
    static let allowedStatuses: Set<Int> = [400, 413, 431, 501, 505]

    static let limitChoices: [HTTPParserLimits] = [
        HTTPParserLimits(),
        HTTPParserLimits(maxHeadBytes: 160, maxHeaderCount: 5, maxBodyBytes: 100),
        HTTPParserLimits(maxHeadBytes: 48, maxHeaderCount: 1, maxBodyBytes: 8),
    ]

    /// One generated request and what a correct parser must report for it.
    struct Generated {
        var bytes: [UInt8] = []
        var targets: [String] = []
        var bodies: [[UInt8]] = []
        /// Offsets of header lines (start..<end including CRLF), for duplication.
        var headerLines: [Range<Int>] = []
    }

    static let methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
    static let headerNames = ["Accept", "User-Agent", "X-Request-Id", "Cookie", "Cache-Control", "X-A", "If-None-Match"]
    static let valueBytes: [UInt8] = Array("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_.;=,/ \t\"()".utf8)
    static let pathBytes: [UInt8] = Array("abcxyz019-._~%/".utf8)
    static let specialBytes: [UInt8] = [13, 10, 32, 9, 58, 59, 0, 48, 102, 44, 127, 255, 72]

    static func appendString(_ s: String, to out: inout [UInt8]) { out.append(contentsOf: s.utf8) }

    static func generate(_ rng: inout SplitMix64) -> Generated {
        var g = Generated()
        let count = 1 + rng.below(3)
        for _ in 0..<count {
            let method = methods[rng.below(methods.count)]
            let http10 = rng.chance(10)
            var target = "/"
            for _ in 0..<rng.below(12) { target.unicodeScalars.append(Unicode.Scalar(pathBytes[rng.below(pathBytes.count)])) }
            if rng.chance(30) { target += "?q=\(rng.below(1000))" }
            if rng.chance(20) { g.bytes.append(contentsOf: [13, 10]) }  // tolerated empty line
            appendString("\(method) \(target) HTTP/1.\(http10 ? 0 : 1)\r\n", to: &g.bytes)
            g.targets.append(target)

            func headerLine(_ name: String, _ value: [UInt8]) {
                let start = g.bytes.count
                appendString(name, to: &g.bytes)
                g.bytes.append(58)
                if rng.chance(80) { g.bytes.append(32) }
                g.bytes.append(contentsOf: value)
                g.bytes.append(contentsOf: [13, 10])
                g.headerLines.append(start..<g.bytes.count)
            }
            if !http10 || rng.chance(50) { headerLine("Host", Array("example.test".utf8)) }
            for _ in 0..<rng.below(5) {
                var value: [UInt8] = []
                for _ in 0..<rng.below(24) { value.append(valueBytes[rng.below(valueBytes.count)]) }
                // A value never ends in whitespace here: the parser trims it, which would not round-trip.
                while let last = value.last, last == 32 || last == 9 { value.removeLast() }
                while let first = value.first, first == 32 || first == 9 { value.removeFirst() }
                headerLine(headerNames[rng.below(headerNames.count)], value)
            }
            if rng.chance(15) { headerLine("Connection", Array((rng.chance(50) ? "keep-alive" : "close").utf8)) }
            if rng.chance(10) { headerLine("Expect", Array("100-continue".utf8)) }

            var body: [UInt8] = []
            let framing = rng.below(3)  // 0 none, 1 Content-Length, 2 chunked
            if framing > 0 {
                for _ in 0..<rng.below(rng.chance(20) ? 300 : 40) { body.append(UInt8(truncatingIfNeeded: rng.next())) }
            }
            if framing == 1 || (framing == 2 && http10) {
                headerLine("Content-Length", Array(String(body.count).utf8))
                g.bytes.append(contentsOf: [13, 10])
                g.bytes.append(contentsOf: body)
            } else if framing == 2 {
                headerLine("Transfer-Encoding", Array("chunked".utf8))
                g.bytes.append(contentsOf: [13, 10])
                var rest = body[...]
                while !rest.isEmpty {
                    let n = min(rest.count, 1 + rng.below(64))
                    appendString(String(n, radix: 16, uppercase: rng.chance(50)), to: &g.bytes)
                    if rng.chance(20) { appendString(";ext=\(rng.below(100))", to: &g.bytes) }
                    g.bytes.append(contentsOf: [13, 10])
                    g.bytes.append(contentsOf: rest.prefix(n))
                    g.bytes.append(contentsOf: [13, 10])
                    rest = rest.dropFirst(n)
                }
                g.bytes.append(48)
                g.bytes.append(contentsOf: [13, 10])
                if rng.chance(20) { appendString("X-Trailer: \(rng.below(10))\r\n", to: &g.bytes) }
                g.bytes.append(contentsOf: [13, 10])
            } else {
                g.bytes.append(contentsOf: [13, 10])
            }
            g.bodies.append(body)
        }
        return g
    }

    static func mutate(_ g: Generated, _ rng: inout SplitMix64) -> [UInt8] {
        var b = g.bytes
        for _ in 0..<(1 + rng.below(3)) {
            guard !b.isEmpty else { break }
            let i = rng.below(b.count)
            switch rng.below(8) {
            case 0: b[i] = UInt8(truncatingIfNeeded: rng.next())  // random byte flip
            case 1: b[i] = specialBytes[rng.below(specialBytes.count)]
            case 2: b.insert(rng.chance(50) ? specialBytes[rng.below(specialBytes.count)] : UInt8(truncatingIfNeeded: rng.next()), at: i)
            case 3: b.remove(at: i)
            case 4: b.removeSubrange(i..<min(b.count, i + 1 + rng.below(16)))
            case 5: b.removeSubrange(rng.below(b.count)...)  // truncation
            case 6:  // duplicate a header line (e.g. Host, Content-Length, Transfer-Encoding)
                if let line = g.headerLines.randomElement(using: &rng), line.upperBound <= b.count {
                    b.insert(contentsOf: b[line], at: line.lowerBound)
                }
            default:  // duplicate a random range
                let end = min(b.count, i + 1 + rng.below(40))
                b.insert(contentsOf: b[i..<end], at: rng.below(b.count))
            }
        }
        return b
    }

    /// Checks the per-parse invariants; returns the outcome for comparison.
    static func check(
        _ outcome: ParseOutcome, inputCount: Int, limits: HTTPParserLimits, context: @autoclosure () -> String
    ) -> Bool {
        var ok = true
        if let error = outcome.error, !allowedStatuses.contains(error.status) {
            Issue.record("status \(error.status) not allowed (\(error)); \(context())")
            ok = false
        }
        if outcome.events.count > 2 * inputCount + 4 {
            Issue.record("\(outcome.events.count) events from \(inputCount) bytes; \(context())")
            ok = false
        }
        // Shape: (head body* end)* with an optional unfinished message at the end.
        var inMessage = false
        var bodyBytes = 0
        var declared: Int? = nil
        for event in outcome.events {
            switch event {
            case .head(let head):
                if inMessage { Issue.record("head inside a message; \(context())"); ok = false }
                inMessage = true
                bodyBytes = 0
                if case .contentLength(let n) = head.bodyFraming { declared = n } else { declared = nil }
                if head.bodyFraming == .none { declared = 0 }
            case .body(let chunk):
                if !inMessage { Issue.record("body outside a message; \(context())"); ok = false }
                bodyBytes += chunk.count
                if bodyBytes > limits.maxBodyBytes {
                    Issue.record("body of \(bodyBytes) bytes exceeds the limit \(limits.maxBodyBytes); \(context())")
                    ok = false
                }
                if let declared, bodyBytes > declared {
                    Issue.record("body of \(bodyBytes) bytes exceeds Content-Length \(declared); \(context())")
                    ok = false
                }
            case .end:
                if !inMessage { Issue.record("end outside a message; \(context())"); ok = false }
                if let declared, bodyBytes != declared {
                    Issue.record("ended after \(bodyBytes) of \(declared) bytes; \(context())")
                    ok = false
                }
                inMessage = false
            }
        }
        return ok
    }

    static func describe(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix(400), as: UTF8.self).debugDescription
    }

    static let iterationsPerSeed = 25_000

    // No time limit: the work is fixed (four seeds, a fixed number of iterations each), and how
    // long a debug build takes for it on a loaded machine is no property of the parser.
    @Test(arguments: [0xA11CE, 0xB0B, 0xCAFE, 0xD00D] as [UInt64])
    func mutatedRequestsNeverCrashOrMisreport(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var stats = (valid: 0, mutated: 0, errors: [Int: Int](), events: 0)
        var failures = 0
        for iteration in 0..<Self.iterationsPerSeed {
            let generated = Self.generate(&rng)
            let mutated = rng.below(100) >= 15
            let input = mutated ? Self.mutate(generated, &rng) : generated.bytes
            let limits = Self.limitChoices[rng.below(100) < 60 ? 0 : 1 + rng.below(2)]
            let context = { "seed \(seed) iteration \(iteration) limits \(limits) input \(Self.describe(input))" }

            let whole = parse(input, limits: limits)
            let chunks =
                iteration % 64 == 0
                ? input.indices.map { input[$0..<$0 + 1] }
                : randomChunks(input, cuts: 1 + rng.below(8), rng: &rng)
            let split = parse(chunks: chunks, limits: limits)

            var ok = Self.check(whole, inputCount: input.count, limits: limits, context: context())
            ok = Self.check(split, inputCount: input.count, limits: limits, context: "split " + context()) && ok

            // Feeding in pieces never changes the result of a parse that succeeds
            // as a whole, and never makes a rejected input acceptable.
            if whole.error == nil {
                if split.error != nil || normalized(split.events) != normalized(whole.events) {
                    Issue.record("split parse differs: \(String(describing: split.error)); chunks \(chunks.map(\.count)); \(context())")
                    ok = false
                }
            } else if split.error == nil {
                Issue.record("whole parse failed with \(whole.error!) but the split parse did not; \(context())")
                ok = false
            }

            if mutated {
                stats.mutated += 1
            } else {
                stats.valid += 1
                // An unmutated request parses exactly, unless it is over a (small) limit.
                if let error = whole.error {
                    if limits == HTTPParserLimits() || ![413, 431].contains(error.status) {
                        Issue.record("valid request rejected with \(error); \(context())")
                        ok = false
                    }
                } else {
                    let parsed = normalized(whole.events)
                    if heads(parsed).map(\.target) != generated.targets || bodies(parsed) != generated.bodies {
                        Issue.record("valid request misparsed; \(context())")
                        ok = false
                    }
                }
            }
            if let error = whole.error { stats.errors[error.status, default: 0] += 1 }
            stats.events += whole.events.count
            if !ok {
                failures += 1
                if failures >= 5 { break }  // enough to diagnose; keep the log readable
            }
        }
        #expect(failures == 0)
        // The generator must actually reach the interesting paths.
        #expect(stats.valid > Self.iterationsPerSeed / 10)
        #expect(stats.events > Self.iterationsPerSeed)
        for status in [400, 413, 431] {
            #expect(stats.errors[status, default: 0] > 10, "status \(status) seen \(stats.errors[status, default: 0]) times")
        }
    }
}
