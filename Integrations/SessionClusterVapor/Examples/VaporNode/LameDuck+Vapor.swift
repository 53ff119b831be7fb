import Dispatch
import SessionClusterNodeKit
import Vapor

#if canImport(Glibc)
import Glibc
#endif

/// While the node drains, adds `Connection: close` to every response, so every
/// client, such as a balancer's pooled connection, stops using its connection
/// after the response it is reading.
///
/// Vapor's HTTP/1 server then appends its own `Connection: keep-alive` (it
/// decides by the request alone), so the response carries both fields, `close`
/// first; the combined value `close, keep-alive` has the `close` option, which
/// HTTP/1.1 clients (the balancer, SwiftNIO's, curl) obey. Vapor offers no way
/// for a middleware to close the connection itself: the client closes it, or
/// the server's shutdown after the delay does.
struct LameDuckMiddleware: AsyncMiddleware {
    let lameDuck: LameDuck

    func respond(to request: Request, chainingTo next: any AsyncResponder) async throws -> Response {
        let response = try await next.respond(to: request)
        if lameDuck.isDraining { response.headers.replaceOrAdd(name: .connection, value: "close") }
        return response
    }
}

/// SIGTERM and SIGINT, as an async wait. From `init` on, their default action
/// (ending the process) is ignored and a signal arriving before `next()` is
/// kept, so create this before the server starts.
struct TerminationSignals: ~Copyable {
    private let sources: [any DispatchSourceSignal]
    private let stream: AsyncStream<Int32>

    init() {
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        var sources: [any DispatchSourceSignal] = []
        for signalNumber in [SIGTERM, SIGINT] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { continuation.yield(signalNumber) }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
        self.stream = stream
    }

    /// Waits for the first of them; returns its number.
    func next() async -> Int32 {
        var iterator = stream.makeAsyncIterator()
        return await iterator.next() ?? SIGTERM
    }

    deinit {
        for source in sources { source.cancel() }
    }
}
