#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization
import Testing

@testable import MiniHTTP
import SystemSupport
// Re-exported so that every file of these tests sees the shared helpers (`poll`, ...).
@_exported import TestSupport

// MARK: - Deterministic randomness

// SplitMix64 (MiniHTTP's), seeded, keeps every random test reproducible.
extension SplitMix64 {
    /// True with probability `percent`/100.
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}

// MARK: - Parser helpers

typealias Event = HTTPRequestParser.Event

/// A parser event that may carry body bytes (the request and the response parsers').
protocol BodyEvent: Equatable {
    static func body(_ bytes: [UInt8]) -> Self
    /// The bytes of a body event; nil for any other event.
    var bodyBytes: [UInt8]? { get }
}

extension HTTPRequestParser.Event: BodyEvent {
    var bodyBytes: [UInt8]? { if case .body(let bytes) = self { bytes } else { nil } }
}

extension HTTPResponseParser.Event: BodyEvent {
    var bodyBytes: [UInt8]? { if case .body(let bytes) = self { bytes } else { nil } }
}

/// Merges adjacent body events: how a body is chunked into events depends on
/// how the input was split, the bytes do not.
func normalized<E: BodyEvent>(_ events: [E]) -> [E] {
    var out: [E] = []
    for event in events {
        if let more = event.bodyBytes, let previous = out.last?.bodyBytes {
            out[out.count - 1] = .body(previous + more)
        } else if event.bodyBytes?.isEmpty == true {
            continue
        } else {
            out.append(event)
        }
    }
    return out
}

/// The outcome of feeding some input to a fresh parser.
struct ParseOutcome {
    var events: [Event] = []
    var error: HTTPParseError? = nil
}

/// Pulls every available event; stops at nil or at an error.
func drain(_ parser: inout HTTPRequestParser, into outcome: inout ParseOutcome, maxEvents: Int = 1_000_000) {
    var pulled = 0
    while outcome.error == nil {
        do {
            guard let event = try parser.next() else { return }
            outcome.events.append(event)
        } catch {
            outcome.error = error
            return
        }
        pulled += 1
        if pulled > maxEvents {
            Issue.record("parser produced more than \(maxEvents) events without asking for input")
            return
        }
    }
}

/// Feeds `chunks` one after another, draining events after each.
func parse(chunks: [ArraySlice<UInt8>], limits: HTTPParserLimits = HTTPParserLimits()) -> ParseOutcome {
    var parser = HTTPRequestParser(limits: limits)
    var outcome = ParseOutcome()
    for chunk in chunks {
        parser.append(chunk)
        drain(&parser, into: &outcome)
        if outcome.error != nil { break }
    }
    return outcome
}

func parse(_ bytes: [UInt8], limits: HTTPParserLimits = HTTPParserLimits()) -> ParseOutcome {
    parse(chunks: [bytes[...]], limits: limits)
}

func parse(_ text: String, limits: HTTPParserLimits = HTTPParserLimits()) -> ParseOutcome {
    parse(Array(text.utf8), limits: limits)
}

func parseByteByByte(_ bytes: [UInt8], limits: HTTPParserLimits = HTTPParserLimits()) -> ParseOutcome {
    parse(chunks: bytes.indices.map { bytes[$0..<$0 + 1] }, limits: limits)
}

/// Splits `bytes` at `cuts` random positions.
func randomChunks(_ bytes: [UInt8], cuts: Int, rng: inout SplitMix64) -> [ArraySlice<UInt8>] {
    guard bytes.count > 1, cuts > 0 else { return [bytes[...]] }
    var points = Set<Int>()
    for _ in 0..<cuts { points.insert(1 + rng.below(bytes.count - 1)) }
    var chunks: [ArraySlice<UInt8>] = []
    var start = 0
    for p in points.sorted() {
        chunks.append(bytes[start..<p])
        start = p
    }
    chunks.append(bytes[start...])
    return chunks
}

/// The heads of a list of events.
func heads(_ events: [Event]) -> [HTTPRequestHead] {
    events.compactMap { if case .head(let h) = $0 { h } else { nil } }
}

/// The concatenated body bytes of each message, in order.
func bodies(_ events: [Event]) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var current: [UInt8]? = nil
    for event in events {
        switch event {
        case .head: current = []
        case .body(let b): current?.append(contentsOf: b)
        case .end:
            if let c = current { out.append(c) }
            current = nil
        }
    }
    return out
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

// MARK: - Server helpers

/// Server settings for tests: ephemeral port, few threads, short timeouts so a
/// failing test cannot keep `shutdown()` waiting for long.
func testConfiguration(
    handlerThreads: Int = 4, maxConnections: Int = 64, limits: HTTPParserLimits = HTTPParserLimits(),
    headerTimeoutMillis: Int = 2_000, bodyTimeoutMillis: Int = 2_000, idleTimeoutMillis: Int = 5_000,
    writeTimeoutMillis: Int = 2_000
) -> HTTPServerConfiguration {
    HTTPServerConfiguration(
        host: "127.0.0.1", port: 0, eventLoops: 2, handlerThreads: handlerThreads, maxConnections: maxConnections,
        limits: limits, headerTimeoutMillis: headerTimeoutMillis, bodyTimeoutMillis: bodyTimeoutMillis,
        idleTimeoutMillis: idleTimeoutMillis, writeTimeoutMillis: writeTimeoutMillis, shutdownGraceMillis: 2_000)
}

/// Starts a server, runs `body`, and always shuts the server down afterwards.
func withServer(
    _ configuration: HTTPServerConfiguration = testConfiguration(), middleware: [any HTTPMiddleware] = [],
    responder: @escaping HTTPResponder, _ body: (HTTPServer) throws -> Void
) throws {
    let server = HTTPServer(
        configuration: configuration, logger: quietLogger(), middleware: middleware, responder: responder)
    try server.start()
    defer { server.shutdown() }
    try #require(server.port > 0)
    try body(server)
}

/// An echo responder: answers with the method and target, and the body after a newline.
let echoResponder: HTTPResponder = { request in
    HTTPResponse(status: 200, headers: ["Content-Type": "text/plain"], body: bytes("\(request.method) \(request.head.target)\n") + request.body)
}

/// Runs `body` on a new thread; `isDone` polls whether it returned.
final class BackgroundJob: Sendable {
    private let done = Mutex(false)

    init(_ body: @escaping @Sendable () -> Void) {
        startThread { [self] in
            body()
            done.withLock { $0 = true }
        }
    }

    var isDone: Bool { done.withLock { $0 } }

    /// Waits (polling) until the job finished; false on timeout.
    func wait(timeoutMillis: Int) -> Bool {
        poll(timeoutMillis: timeoutMillis) { isDone }
    }
}

/// Splits on CRLF (a single Character in Swift strings); bare CR or LF do not split.
func crlfLines(_ s: String) -> [String] {
    s.split(separator: "\r\n" as Character, omittingEmptySubsequences: false).map(String.init)
}

/// A simple GET request.
func getRequest(_ target: String = "/", extraHeaders: String = "") -> String {
    "GET \(target) HTTP/1.1\r\nHost: test\r\n\(extraHeaders)\r\n"
}
