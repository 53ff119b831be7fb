#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import Synchronization
import SystemSupport

/// A minimal HTTP/1.1 server: epoll event loops (one per core) accept, read,
/// parse and write; handlers run on a bounded thread pool, or on the loop
/// itself when `handlerThreads` is 0.
///
/// The first design was a thread per connection with blocking reads; under
/// wrk at 50 connections it spent a third of its CPU switching threads, so
/// sockets are now multiplexed the way nginx and HAProxy do it.
public final class HTTPServer: Sendable {
    public let configuration: HTTPServerConfiguration
    let chain: MiddlewareChain
    let logger: Logger

    private struct State {
        var started = false
        var listenFD: Int32 = -1
        var port = 0
        var loops: [ServerLoop] = []
        var pool: HandlerPool?
    }

    private let state = Mutex(State())
    let stopping = Atomic<Bool>(false)
    /// Lame duck (see `HTTPServer+Draining.swift`): every response closes its connection.
    let draining = Atomic<Bool>(false)
    let openConnections = Atomic<Int>(0)
    /// Which loop serves each accepted connection (the one with the fewest).
    let spreader: ConnectionSpreader
    let counters = Counters()
    private let stopped = DispatchSemaphore(value: 0)
    private let liveLoops = Atomic<Int>(0)

    /// Counters since start.
    public struct Stats: Sendable {
        public var connectionsAccepted = 0
        public var connectionsRejected = 0
        public var requests = 0
        public var parseErrors = 0
        public var timeouts = 0
        /// Readiness events handled on client connections: a diagnostic (a spinning loop shows as a fast-growing count).
        public var connectionEvents = 0
        /// Bytes set aside now for request bodies still arriving: a diagnostic (it grows with the
        /// bytes received, not with the lengths requests announce).
        public var bodyBufferBytes = 0
        /// Open connections on each event loop (`ConnectionSpreader` keeps them even).
        public var connectionsPerLoop: [Int] = []
    }

    final class Counters: Sendable {
        let connectionsAccepted = Atomic<Int>(0)
        let connectionsRejected = Atomic<Int>(0)
        let requests = Atomic<Int>(0)
        let parseErrors = Atomic<Int>(0)
        let timeouts = Atomic<Int>(0)
        let connectionEvents = Atomic<Int>(0)
        let bodyBufferBytes = Atomic<Int>(0)
    }

    public init(configuration: HTTPServerConfiguration, logger: Logger, chain: MiddlewareChain) {
        self.configuration = configuration
        self.logger = logger
        self.chain = chain
        spreader = ConnectionSpreader(loops: max(1, configuration.eventLoops))
    }

    public convenience init(
        configuration: HTTPServerConfiguration, logger: Logger, middleware: [any HTTPMiddleware] = [],
        responder: @escaping HTTPResponder
    ) {
        self.init(configuration: configuration, logger: logger, chain: MiddlewareChain(middleware, responder: responder))
    }

    /// The bound port (after `start()`).
    public var port: Int { state.withLock { $0.port } }

    public var statistics: Stats {
        Stats(
            connectionsAccepted: counters.connectionsAccepted.load(ordering: .relaxed),
            connectionsRejected: counters.connectionsRejected.load(ordering: .relaxed),
            requests: counters.requests.load(ordering: .relaxed),
            parseErrors: counters.parseErrors.load(ordering: .relaxed),
            timeouts: counters.timeouts.load(ordering: .relaxed),
            connectionEvents: counters.connectionEvents.load(ordering: .relaxed),
            bodyBufferBytes: counters.bodyBufferBytes.load(ordering: .relaxed),
            connectionsPerLoop: spreader.openPerLoop)
    }

    /// Binds, listens and starts the threads. Returns once the port accepts connections.
    public func start() throws {
        precondition(configuration.eventLoops >= 1, "eventLoops must be at least 1")
        let fd = try Sockets.listen(host: configuration.host, port: configuration.port)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let port = Sockets.localPort(fd)
        var loops: [ServerLoop] = []
        do {
            for index in 0..<configuration.eventLoops {
                loops.append(try ServerLoop(server: self, index: index, listenFD: fd))
            }
        } catch {
            for loop in loops { loop.closeDescriptors() }
            close(fd)
            throw error
        }
        let pool = configuration.handlerThreads > 0 ? HandlerPool(threads: configuration.handlerThreads) : nil
        state.withLock {
            precondition(!$0.started, "HTTPServer.start() called twice")
            $0.started = true
            $0.listenFD = fd
            $0.port = port
            $0.loops = loops
            $0.pool = pool
        }
        liveLoops.store(loops.count, ordering: .sequentiallyConsistent)
        for loop in loops {
            startThread { [self] in
                loop.run(pool: pool)
                if liveLoops.subtract(1, ordering: .sequentiallyConsistent).newValue == 0 { finishStop() }
            }
        }
        logger.info("listening", metadata: ["address": "\(configuration.host):\(port)"])
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace
    /// period), closes idle connections, and returns when all loops ended.
    public func shutdown() {
        let (started, loops) = state.withLock { ($0.started, $0.loops) }
        guard started else { return }
        if !stopping.exchange(true, ordering: .sequentiallyConsistent) {
            logger.info("shutting down")
            for loop in loops { loop.wake() }
        }
        waitUntilStopped()
    }

    /// Wakes loop `index` (a connection was handed to it).
    func wakeLoop(_ index: Int) {
        state.withLock { $0.loops[index] }.wake()
    }

    private func finishStop() {
        let (fd, pool) = state.withLock { ($0.listenFD, $0.pool) }
        pool?.stop()
        close(fd)
        logger.info("stopped")
        stopped.signal()
    }

    /// Blocks until `shutdown()` completed (returns at once if never started).
    public func waitUntilStopped() {
        guard state.withLock({ $0.started }) else { return }
        stopped.wait()
        stopped.signal()
    }

    /// The JSON error response for a parse failure or timeout.
    static func errorResponse(status: Int, reason: String) -> HTTPResponse {
        let code =
            switch status {
            case 408: "request_timeout"
            case 413: "body_too_large"
            case 431: "headers_too_large"
            case 501: "not_implemented"
            case 503: "server_busy"
            case 505: "version_not_supported"
            default: "bad_request"
            }
        return HTTPError(status: status, code: code, message: reason).response
    }
}
