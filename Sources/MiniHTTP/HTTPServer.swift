#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import Synchronization

/// Settings of an `HTTPServer`.
public struct HTTPServerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port; read the result from `HTTPServer.port`.
    public var port: Int
    /// Connection threads: the number of connections served at once.
    public var workerThreads: Int
    /// Accepted connections waiting for a thread; beyond this, new ones get 503.
    public var maxPendingConnections: Int
    public var limits: HTTPParserLimits
    /// From the first byte of a request to the end of its headers (408 after).
    public var headerTimeoutMillis: Int
    /// Longest wait for the next bytes of a body (408 after).
    public var bodyTimeoutMillis: Int
    /// Longest wait for the next request on a kept-alive connection.
    public var idleTimeoutMillis: Int
    /// Longest wait for a write to make progress.
    public var writeTimeoutMillis: Int
    /// Longest wait for in-flight requests at shutdown.
    public var shutdownGraceMillis: Int

    public init(
        host: String = "127.0.0.1", port: Int = 8080, workerThreads: Int = 128, maxPendingConnections: Int = 512,
        limits: HTTPParserLimits = HTTPParserLimits(), headerTimeoutMillis: Int = 10_000,
        bodyTimeoutMillis: Int = 30_000, idleTimeoutMillis: Int = 60_000, writeTimeoutMillis: Int = 30_000,
        shutdownGraceMillis: Int = 30_000
    ) {
        self.host = host
        self.port = port
        self.workerThreads = workerThreads
        self.maxPendingConnections = maxPendingConnections
        self.limits = limits
        self.headerTimeoutMillis = headerTimeoutMillis
        self.bodyTimeoutMillis = bodyTimeoutMillis
        self.idleTimeoutMillis = idleTimeoutMillis
        self.writeTimeoutMillis = writeTimeoutMillis
        self.shutdownGraceMillis = shutdownGraceMillis
    }
}

/// A minimal HTTP/1.1 server: one accept thread and a bounded pool of
/// connection threads doing blocking reads with deadlines.
public final class HTTPServer: Sendable {
    public let configuration: HTTPServerConfiguration
    private let chain: MiddlewareChain
    private let logger: Logger

    private struct State {
        var listenFD: Int32 = -1
        var port = 0
        var pending: [Int32] = []
        var pendingHead = 0
        var started = false
        var stopping = false
        var liveWorkers = 0
        var acceptRunning = false
        var stopEventFD: Int32 = -1
        var stopWriteFD: Int32 = -1
        /// Connections being served, so shutdown can cut them off after the grace period.
        var active: Set<Int32> = []
    }

    private let state = Mutex(State())
    private let work = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let counters = Counters()
    private let stopping = Atomic<Bool>(false)

    /// Counters since start.
    public struct Stats: Sendable {
        public var connectionsAccepted = 0
        public var connectionsRejected = 0
        public var requests = 0
        public var parseErrors = 0
        public var timeouts = 0
    }

    private final class Counters: Sendable {
        let connectionsAccepted = Atomic<Int>(0)
        let connectionsRejected = Atomic<Int>(0)
        let requests = Atomic<Int>(0)
        let parseErrors = Atomic<Int>(0)
        let timeouts = Atomic<Int>(0)
    }

    public init(configuration: HTTPServerConfiguration, logger: Logger, chain: MiddlewareChain) {
        self.configuration = configuration
        self.logger = logger
        self.chain = chain
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
            timeouts: counters.timeouts.load(ordering: .relaxed))
    }

    /// Binds, listens and starts the threads. Returns once the port accepts connections.
    public func start() throws {
        let fd = try Sockets.listen(host: configuration.host, port: configuration.port)
        // A pipe whose read end turns readable at shutdown wakes every idle connection thread.
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw SocketError("pipe", errno: errno) }
        for p in pipeFDs { _ = fcntl(p, F_SETFD, FD_CLOEXEC) }
        let efd = pipeFDs[0]
        let port = Sockets.localPort(fd)
        state.withLock {
            precondition(!$0.started, "HTTPServer.start() called twice")
            $0.started = true
            $0.listenFD = fd
            $0.port = port
            $0.stopEventFD = efd
            $0.stopWriteFD = pipeFDs[1]
            $0.liveWorkers = configuration.workerThreads
            $0.acceptRunning = true
        }
        for _ in 0..<configuration.workerThreads {
            startThread { [self] in workerLoop(stopFD: efd) }
        }
        startThread { [self] in acceptLoop(fd) }
        logger.info("listening", metadata: ["address": "\(configuration.host):\(port)"])
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace
    /// period), closes idle connections, and returns when all threads ended.
    public func shutdown() {
        let (started, fd, wfd, alreadyStopping) = state.withLock { s -> (Bool, Int32, Int32, Bool) in
            let was = s.stopping
            s.stopping = true
            stopping.store(true, ordering: .relaxed)
            return (s.started, s.listenFD, s.stopWriteFD, was)
        }
        guard started else { return }
        if !alreadyStopping {
            logger.info("shutting down")
            if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
            var one: UInt8 = 1
            _ = write(wfd, &one, 1)
            for _ in 0..<configuration.workerThreads { work.signal() }
            let grace = DispatchTime.now() + .milliseconds(configuration.shutdownGraceMillis)
            if stopped.wait(timeout: grace) == .timedOut {
                let cut = state.withLock { $0.active }
                logger.warning("grace period over, closing connections", metadata: ["connections": "\(cut.count)"])
                // Wakes the threads blocked on these sockets; they close them.
                for conn in cut { Glibc.shutdown(conn, Int32(SHUT_RDWR)) }
            } else {
                stopped.signal()
            }
        }
        waitUntilStopped()
    }

    /// Blocks until `shutdown()` completed (returns at once if never started).
    public func waitUntilStopped() {
        guard state.withLock({ $0.started }) else { return }
        stopped.wait()
        stopped.signal()
    }

    private func acceptLoop(_ listenFD: Int32) {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if state.withLock({ $0.stopping }) { break }
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                    logger.error("accept failed, backing off", metadata: ["errno": "\(errno)"])
                    usleep(50_000)
                    continue
                }
                logger.error("accept failed", metadata: ["error": "\(SocketError("accept", errno: errno))"])
                usleep(10_000)
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let accepted = state.withLock { s -> Bool in
                if s.stopping || s.pending.count - s.pendingHead >= configuration.maxPendingConnections { return false }
                if s.pendingHead > 1024 {
                    s.pending.removeFirst(s.pendingHead)
                    s.pendingHead = 0
                }
                s.pending.append(fd)
                return true
            }
            if accepted {
                counters.connectionsAccepted.add(1, ordering: .relaxed)
                work.signal()
            } else {
                counters.connectionsRejected.add(1, ordering: .relaxed)
                Sockets.setSendTimeout(fd, millis: 100)
                let busy = HTTPError(status: 503, code: "server_busy", message: "too many connections").response
                _ = Sockets.writeAll(fd, HTTPResponseSerializer.serialize(busy, keepAlive: false))
                close(fd)
            }
        }
        close(listenFD)
        state.withLock { $0.acceptRunning = false }
        workerExited()
    }

    private func workerLoop(stopFD: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            work.wait()
            let fd: Int32? = state.withLock { s in
                guard s.pendingHead < s.pending.count else { return nil }
                let fd = s.pending[s.pendingHead]
                s.pendingHead += 1
                return fd
            }
            guard let fd else {
                if state.withLock({ $0.stopping }) { break }
                continue
            }
            state.withLock { _ = $0.active.insert(fd) }
            serve(fd, stopFD: stopFD, buffer: &buffer)
            state.withLock { _ = $0.active.remove(fd) }
            close(fd)
        }
        workerExited()
    }

    private func workerExited() {
        let last = state.withLock { s -> Bool in
            s.liveWorkers -= 1
            return s.liveWorkers == -1  // the accept thread counts as one more
        }
        if last {
            let (rfd, wfd) = state.withLock { ($0.stopEventFD, $0.stopWriteFD) }
            close(rfd)
            close(wfd)
            logger.info("stopped")
            stopped.signal()
        }
    }

    private var isStopping: Bool { stopping.load(ordering: .relaxed) }

    private enum ReadResult { case data(Int), closed, timeout, stopping }

    /// Waits for readable data until `deadline` (monotonic ms), or the stop event when `stoppable`.
    private func read(_ fd: Int32, stopFD: Int32, into buffer: inout [UInt8], deadline: Int64, stoppable: Bool)
        -> ReadResult
    {
        while true {
            let remaining = deadline - monotonicMillis()
            if remaining <= 0 { return .timeout }
            var fds = [
                pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0),
            ]
            let n = poll(&fds, stoppable ? 2 : 1, Int32(min(remaining, Int64(Int32.max))))
            if n < 0 {
                if errno == EINTR { continue }
                return .closed
            }
            if n == 0 { return .timeout }
            if fds[0].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count > 0 { return .data(count) }
                if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                return .closed
            }
            if stoppable && fds[1].revents != 0 { return .stopping }
        }
    }

    private func serve(_ fd: Int32, stopFD: Int32, buffer: inout [UInt8]) {
        Sockets.setNoDelay(fd)
        Sockets.setSendTimeout(fd, millis: configuration.writeTimeoutMillis)
        let remote = Sockets.peerAddress(fd)
        var parser = HTTPRequestParser(limits: configuration.limits)
        var head: HTTPRequestHead? = nil
        var body: [UInt8] = []
        var headDeadline: Int64 = 0
        var sentContinue = false

        func fail(_ status: Int, _ reason: String) {
            let code = switch status {
            case 408: "request_timeout"
            case 413: "body_too_large"
            case 431: "headers_too_large"
            case 501: "not_implemented"
            case 505: "version_not_supported"
            default: "bad_request"
            }
            let response = HTTPError(status: status, code: code, message: reason)
            _ = Sockets.writeAll(fd, HTTPResponseSerializer.serialize(response.response, keepAlive: false))
        }

        while true {
            let event: HTTPRequestParser.Event?
            do {
                event = try parser.next()
            } catch {
                counters.parseErrors.add(1, ordering: .relaxed)
                logger.debug("bad request", metadata: ["status": "\(error.status)", "reason": "\(error.reason)"])
                fail(error.status, error.reason)
                return
            }
            switch event {
            case .head(let h):
                head = h
                body = []
                sentContinue = false
                if case .contentLength(let n) = h.bodyFraming { body.reserveCapacity(n) }
            case .body(let bytes):
                body.append(contentsOf: bytes)
            case .end:
                guard let h = head else { return }
                head = nil
                headDeadline = 0  // the next request's head gets its own deadline
                counters.requests.add(1, ordering: .relaxed)
                let request = HTTPRequest(head: h, body: body, remoteAddress: remote)
                body = []
                let response = chain.respond(to: request) { error in
                    logger.error("handler failed", metadata: ["path": "\(h.path)", "error": "\(error)"])
                }
                let keepAlive = h.keepAlive && !isStopping
                let bytes = HTTPResponseSerializer.serialize(
                    response, keepAlive: keepAlive, headOnly: h.method == "HEAD", version: h.version)
                guard Sockets.writeAll(fd, bytes), keepAlive else { return }
            case nil:
                // Need more input. Which deadline applies depends on where we are.
                let atBoundary = head == nil && parser.isAtMessageBoundary
                let now = monotonicMillis()
                let deadline: Int64
                if atBoundary {
                    // When stopping, only a request that is already here is still served.
                    deadline = now + (isStopping ? 1 : Int64(configuration.idleTimeoutMillis))
                } else if head == nil {
                    if headDeadline == 0 { headDeadline = now + Int64(configuration.headerTimeoutMillis) }
                    deadline = headDeadline
                } else {
                    if let h = head, h.expectsContinue, !sentContinue, parser.bufferedByteCount == 0 {
                        sentContinue = true
                        guard Sockets.writeAll(fd, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return }
                    }
                    deadline = now + Int64(configuration.bodyTimeoutMillis)
                }
                switch read(fd, stopFD: stopFD, into: &buffer, deadline: deadline, stoppable: atBoundary && !isStopping) {
                case .data(let n):
                    if atBoundary { headDeadline = monotonicMillis() + Int64(configuration.headerTimeoutMillis) }
                    buffer.withUnsafeBytes { parser.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                case .closed, .stopping:
                    return
                case .timeout:
                    counters.timeouts.add(1, ordering: .relaxed)
                    if !atBoundary { fail(408, "request not received in time") }
                    return
                }
            }
        }
    }
}

/// Blocks until SIGTERM or SIGINT arrives, then returns the signal number.
public func waitForTerminationSignal() -> Int32 {
    let received = DispatchSemaphore(value: 0)
    let which = Mutex<Int32>(0)
    var sources: [any DispatchSourceSignal] = []
    for sig in [SIGTERM, SIGINT] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            which.withLock { $0 = sig }
            received.signal()
        }
        source.resume()
        sources.append(source)
    }
    received.wait()
    for source in sources { source.cancel() }
    return which.withLock { $0 }
}
