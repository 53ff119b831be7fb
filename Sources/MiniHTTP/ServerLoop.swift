#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import Synchronization
import SystemSupport

/// One connection, owned by the thread of its loop.
final class ServerConnection {
    let fd: Int32
    let id: UInt64
    let remoteAddress: String?
    var parser: HTTPRequestParser
    var head: HTTPRequestHead?
    var body = RequestBodyBuffer()
    var output: [UInt8] = []
    var outputOffset = 0
    /// A request of this connection is with the handler pool.
    var busy = false
    var closeAfterWrite = false
    var peerClosed = false
    var sentContinue = false
    var interest: EpollEvents
    /// Monotonic ms: the first byte of the current request (0 between requests).
    var messageStart: Int64 = 0
    /// Monotonic ms: the end of the current request's head, where its body's time starts.
    var bodyStart: Int64 = 0
    var lastRead: Int64
    var lastWrite: Int64

    init(fd: Int32, id: UInt64, remoteAddress: String?, limits: HTTPParserLimits, now: Int64) {
        self.fd = fd
        self.id = id
        self.remoteAddress = remoteAddress
        parser = HTTPRequestParser(limits: limits)
        interest = [.readable, .peerClosed]
        lastRead = now
        lastWrite = now
    }

    var pendingOutput: Int { output.count - outputOffset }
    var isIdle: Bool { head == nil && messageStart == 0 && !busy && pendingOutput == 0 }
}

/// An epoll loop: accepts from the shared listener, serves its connections.
/// Everything but `completions` and `wake()` is touched by its thread only.
final class ServerLoop: @unchecked Sendable {
    /// Pending output at which a connection stops parsing requests (backpressure on a slow reader).
    private static let outputHighWaterMark = 256 * 1024
    /// Unchecked: the server outlives its loops (each loop's thread holds the server until
    /// `run` returns), and a checked reference costs an atomic retain on every access.
    private unowned(unsafe) let server: HTTPServer
    let index: Int
    private let poller: EpollPoller
    private var connections: [Int32: ServerConnection] = [:]
    private var nextID: UInt64 = 1
    private var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)
    private var listening = true
    /// Monotonic ms, read once after each wait: the clock of every request this pass serves
    /// (timeouts are whole seconds; a clock read per event showed in the profile).
    private var now = monotonicMillis()

    /// Responses finished by the handler pool, waiting to be written by this loop.
    private let completions = Mutex<[(fd: Int32, id: UInt64, bytes: [UInt8], keepAlive: Bool)]>([])
    /// Jobs handed to the pool and not yet completed.
    private let outstanding = Atomic<Int>(0)

    init(server: HTTPServer, index: Int, listenFD: Int32) throws {
        self.server = server
        self.index = index
        poller = try EpollPoller(listenFD: listenFD, logger: server.logger)
    }


    func closeDescriptors() { poller.closeDescriptors() }

    /// Wakes the loop from another thread.
    func wake() { poller.wake() }

    private var configuration: HTTPServerConfiguration { server.configuration }

    func run(pool: HandlerPool?) {
        var ready = ReadyEvents(capacity: 256)
        var nextSweep = monotonicMillis() + 100
        var graceDeadline: Int64? = nil
        while true {
            let n = poller.wait(&ready, timeoutMillis: 100)
            now = monotonicMillis()
            var connectionEvents = 0
            defer { if connectionEvents > 0 { server.counters.connectionEvents.add(connectionEvents, ordering: .relaxed) } }
            for i in 0..<n {
                let event = ready[i]
                switch event.token {
                case EpollPoller.listenToken:
                    if listening { acceptAll(pool: pool) }
                case EpollPoller.wakeToken:
                    poller.consumeWake()
                    for fd in server.spreader.adopt(by: index) { adopt(fd, pool: pool) }
                    drainCompletions(pool: pool)
                default:
                    let fd = Int32(truncatingIfNeeded: event.token & 0xFFFF_FFFF)
                    guard let conn = connections[fd], conn.id == event.token >> 32 else { continue }
                    connectionEvents += 1
                    if !event.events.isDisjoint(with: [.error, .hangUp]) && (conn.busy || conn.peerClosed) {
                        // A hang-up is reported whatever the interest: a connection that is not
                        // reading (its handler runs) would make this loop spin. Nothing can reach
                        // the peer any more; a running handler's result is dropped.
                        closeConnection(conn)
                        continue
                    }
                    if event.events.contains(.writable) { flushAndResume(conn, pool: pool) }
                    if !event.events.isDisjoint(with: [.readable, .error, .hangUp, .peerClosed]), connections[fd] === conn {
                        readable(conn, pool: pool)
                    }
                }
            }
            if server.stopping.load(ordering: .relaxed) {
                if listening {
                    listening = false
                    poller.stopListening()
                    graceDeadline = now + Int64(configuration.shutdownGraceMillis)
                    closeIdleConnections(pool: pool)
                }
                if connections.isEmpty && outstanding.load(ordering: .sequentiallyConsistent) == 0 { break }
                if let deadline = graceDeadline, now >= deadline {
                    server.logger.warning(
                        "grace period over, closing connections", metadata: ["connections": "\(connections.count)"])
                    for conn in Array(connections.values) { closeConnection(conn) }
                    break
                }
            }
            if now >= nextSweep {
                nextSweep = now + 100
                sweepTimeouts(now: now, pool: pool)
            }
        }
        for fd in server.spreader.end(index) {  // handed over as this loop ended
            close(fd)
            server.openConnections.subtract(1, ordering: .relaxed)
        }
        if outstanding.load(ordering: .sequentiallyConsistent) == 0 {
            closeDescriptors()
        } else {
            // A handler still runs and will wake this loop: keep its descriptors valid.
            server.logger.warning("handlers still running after shutdown", metadata: ["loop": "\(index)"])
        }
    }

    private func acceptAll(pool: HandlerPool?) {
        poller.acceptPending(limit: 4) { fd in
            let open = server.openConnections.add(1, ordering: .relaxed).newValue
            if open > configuration.maxConnections {
                server.openConnections.subtract(1, ordering: .relaxed)
                server.counters.connectionsRejected.add(1, ordering: .relaxed)
                let busy = HTTPServer.errorResponse(status: 503, reason: "too many connections")
                _ = Sockets.writeAll(fd, HTTPResponseSerializer.serialize(busy, keepAlive: false))
                close(fd)
                return
            }
            server.counters.connectionsAccepted.add(1, ordering: .relaxed)
            if !server.spreader.handOff(fd, acceptedBy: index, wake: server.wakeLoop) { adopt(fd, pool: pool) }
        }
    }

    /// Serves an accepted connection on this loop (counted on it by the spreader already).
    private func adopt(_ fd: Int32, pool: HandlerPool?) {
        Sockets.setNoDelay(fd)
        let conn = ServerConnection(
            fd: fd, id: nextID, remoteAddress: Sockets.peerAddress(fd), limits: configuration.limits, now: now)
        nextID += 1
        connections[fd] = conn
        guard poller.add(fd, conn.interest, token: token(conn)) else {
            closeConnection(conn)
            return
        }
        if !listening {
            // Handed over while this loop began to stop: as at shutdown, a request already sent is
            // answered, an idle connection closes.
            readable(conn, pool: pool)
            if connections[fd] === conn, conn.isIdle, conn.parser.isAtMessageBoundary { closeConnection(conn) }
        }
    }

    private func token(_ conn: ServerConnection) -> UInt64 { conn.id << 32 | UInt64(UInt32(bitPattern: conn.fd)) }

    private func setInterest(_ conn: ServerConnection, _ events: EpollEvents) {
        guard conn.interest != events else { return }
        conn.interest = events
        poller.modify(conn.fd, events, token: token(conn))
    }

    /// Reading is paused while a request is with the pool, while output is
    /// backed up, after the peer closed, and once the connection will close.
    private func updateInterest(_ conn: ServerConnection) {
        var events: EpollEvents = []
        if !conn.busy && !conn.peerClosed && !conn.closeAfterWrite && conn.pendingOutput < Self.outputHighWaterMark {
            events.formUnion([.readable, .peerClosed])
        }
        if conn.pendingOutput > 0 { events.formUnion([.writable]) }
        setInterest(conn, events)
    }

    private func readable(_ conn: ServerConnection, pool: HandlerPool?) {
        guard !conn.busy, !conn.peerClosed, !conn.closeAfterWrite else { return }
        let count = readBuffer.withUnsafeMutableBytes { recv(conn.fd, $0.baseAddress, $0.count, 0) }
        if count < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
            closeConnection(conn)
            return
        }
        if count == 0 {
            // The peer finished sending. Anything it sent before is still answered.
            conn.peerClosed = true
            if conn.isIdle && conn.parser.bufferedByteCount == 0 {
                closeConnection(conn)
                return
            }
            updateInterest(conn)
            return
        }
        conn.lastRead = now
        if conn.head == nil && conn.messageStart == 0 { conn.messageStart = now }
        readBuffer.withUnsafeBytes { conn.parser.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        process(conn, pool: pool)
    }

    /// Parses what is buffered and answers complete requests, in order.
    private func process(_ conn: ServerConnection, pool: HandlerPool?) {
        while !conn.busy && !conn.closeAfterWrite && conn.pendingOutput < Self.outputHighWaterMark {
            let event: HTTPRequestParser.Event?
            do {
                event = try conn.parser.next()
            } catch {
                server.counters.parseErrors.add(1, ordering: .relaxed)
                server.logger.debug("bad request", metadata: ["status": "\(error.status)", "reason": "\(error.reason)"])
                fail(conn, status: error.status, reason: error.reason)
                break
            }
            guard let event else {
                if let head = conn.head, head.expectsContinue, !conn.sentContinue, conn.parser.bufferedByteCount == 0 {
                    conn.sentContinue = true
                    conn.output.append(contentsOf: "HTTP/1.1 100 Continue\r\n\r\n".utf8)
                }
                if conn.peerClosed && !conn.busy && conn.pendingOutput == 0 {
                    // Nothing more can arrive: a partial request is abandoned.
                    closeConnection(conn)
                    return
                }
                break
            }
            switch event {
            case .head(let head):
                conn.head = head
                conn.bodyStart = now
                conn.sentContinue = false
                let announced: Int? = if case .contentLength(let n) = head.bodyFraming { n } else { nil }
                changeBody(conn) { $0.start(announcedLength: announced, limit: configuration.limits.maxBodyBytes) }
            case .body(let bytes):
                changeBody(conn) { $0.append(bytes) }
            case .end:
                guard let head = conn.head else { break }
                conn.head = nil
                conn.messageStart = conn.parser.isAtMessageBoundary ? 0 : now
                var body: [UInt8] = []
                changeBody(conn) { body = $0.take() }
                dispatch(conn, HTTPRequest(head: head, body: body, remoteAddress: conn.remoteAddress), pool: pool)
            }
        }
        flushAndResume(conn, pool: pool)
    }

    /// Writes what it can of `conn`'s output. When the output was at the high-water mark (which
    /// stops `process`) and this drained it below, goes on with the pipelined requests already
    /// read: no readable event comes for bytes already read.
    private func flushAndResume(_ conn: ServerConnection, pool: HandlerPool?) {
        let wasBackedUp = conn.pendingOutput >= Self.outputHighWaterMark
        flush(conn, pool: pool)
        if wasBackedUp, connections[conn.fd] === conn, !conn.busy, conn.pendingOutput < Self.outputHighWaterMark {
            process(conn, pool: pool)
        }
    }

    /// Changes the connection's body buffer, keeping `Stats.bodyBufferBytes` up to date.
    private func changeBody(_ conn: ServerConnection, _ change: (inout RequestBodyBuffer) -> Void) {
        let before = conn.body.capacity
        change(&conn.body)
        let delta = conn.body.capacity - before
        if delta != 0 { server.counters.bodyBufferBytes.add(delta, ordering: .relaxed) }
    }

    private func dispatch(_ conn: ServerConnection, _ request: HTTPRequest, pool: HandlerPool?) {
        server.counters.requests.add(1, ordering: .relaxed)
        let server = self.server
        let keepAlive = request.head.keepAlive && !conn.peerClosed
        guard let pool else {
            let bytes = Self.respond(server: server, request: request, keepAlive: keepAlive)
            complete(conn, bytes: bytes.bytes, keepAlive: bytes.keepAlive)
            return
        }
        conn.busy = true
        updateInterest(conn)
        outstanding.add(1, ordering: .sequentiallyConsistent)
        let (fd, id) = (conn.fd, conn.id)
        pool.submit { [self] in
            let result = Self.respond(server: server, request: request, keepAlive: keepAlive)
            completions.withLock { $0.append((fd, id, result.bytes, result.keepAlive)) }
            outstanding.subtract(1, ordering: .sequentiallyConsistent)
            wake()
        }
    }

    private static func respond(server: HTTPServer, request: HTTPRequest, keepAlive: Bool) -> (
        bytes: [UInt8], keepAlive: Bool
    ) {
        let response = server.chain.respond(to: request) { error in
            server.logger.error("handler failed", metadata: ["path": "\(request.path)", "error": "\(error)"])
        }
        let keep = keepAlive && !server.stopping.load(ordering: .relaxed) && !server.draining.load(ordering: .relaxed)
        let bytes = HTTPResponseSerializer.serialize(
            response, keepAlive: keep, headOnly: request.method == "HEAD", version: request.head.version)
        return (bytes, keep)
    }

    private func complete(_ conn: ServerConnection, bytes: [UInt8], keepAlive: Bool) {
        conn.output.append(contentsOf: bytes)
        if !keepAlive { conn.closeAfterWrite = true }
    }

    private func drainCompletions(pool: HandlerPool?) {
        let done = completions.withLock { list -> [(fd: Int32, id: UInt64, bytes: [UInt8], keepAlive: Bool)] in
            defer { list.removeAll(keepingCapacity: true) }
            return list
        }
        for item in done {
            guard let conn = connections[item.fd], conn.id == item.id else { continue }
            conn.busy = false
            // Reading was paused during the handler: a pipelined request's clocks start now.
            if conn.messageStart != 0 { conn.messageStart = now }
            conn.lastRead = now
            complete(conn, bytes: item.bytes, keepAlive: item.keepAlive)
            process(conn, pool: pool)  // pipelined requests already buffered
        }
    }

    private func fail(_ conn: ServerConnection, status: Int, reason: String) {
        let response = HTTPServer.errorResponse(status: status, reason: reason)
        conn.output.append(contentsOf: HTTPResponseSerializer.serialize(response, keepAlive: false))
        conn.closeAfterWrite = true
    }

    /// Writes what it can; closes when done and the connection must close.
    private func flush(_ conn: ServerConnection, pool: HandlerPool?) {
        while conn.pendingOutput > 0 {
            let n = conn.output.withUnsafeBytes {
                send(conn.fd, $0.baseAddress! + conn.outputOffset, conn.pendingOutput, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                conn.outputOffset += n
                conn.lastWrite = now
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                updateInterest(conn)
                return
            } else {
                closeConnection(conn)
                return
            }
        }
        conn.output.removeAll(keepingCapacity: conn.output.capacity <= 64 * 1024)
        conn.outputOffset = 0
        if conn.closeAfterWrite || (conn.peerClosed && conn.isIdle && conn.parser.bufferedByteCount == 0) {
            closeConnection(conn)
            return
        }
        if server.stopping.load(ordering: .relaxed) && conn.isIdle && conn.parser.isAtMessageBoundary {
            closeConnection(conn)
            return
        }
        updateInterest(conn)
    }

    private func closeConnection(_ conn: ServerConnection) {
        guard connections[conn.fd] === conn else { return }
        connections[conn.fd] = nil
        changeBody(conn) { $0 = RequestBodyBuffer() }
        poller.remove(conn.fd)
        close(conn.fd)
        server.openConnections.subtract(1, ordering: .relaxed)
        server.spreader.released(by: index)
    }

    /// At shutdown: a request that already arrived is still answered; idle connections close.
    private func closeIdleConnections(pool: HandlerPool?) {
        for conn in Array(connections.values) where conn.isIdle {
            readable(conn, pool: pool)
            if connections[conn.fd] === conn, conn.isIdle, conn.parser.isAtMessageBoundary {
                closeConnection(conn)
            }
        }
    }

    private func sweepTimeouts(now: Int64, pool: HandlerPool?) {
        for conn in Array(connections.values) where !conn.busy {
            if conn.pendingOutput > 0 {
                if now - conn.lastWrite > Int64(configuration.writeTimeoutMillis) {
                    server.counters.timeouts.add(1, ordering: .relaxed)
                    closeConnection(conn)
                }
            } else if let head = conn.head {
                if now - conn.bodyStart > Int64(configuration.bodyTimeoutMillis) {
                    server.logger.info(
                        "request body not received in time",
                        metadata: [
                            "remote": "\(conn.remoteAddress ?? "unknown")", "method": "\(head.method)",
                            "received": "\(conn.body.bytes.count)", "timeout_ms": "\(configuration.bodyTimeoutMillis)",
                        ])
                    timeOut(conn, pool: pool)
                }
            } else if conn.messageStart != 0 {
                if now - conn.messageStart > Int64(configuration.headerTimeoutMillis) {
                    timeOut(conn, pool: pool)
                }
            } else if now - max(conn.lastRead, conn.lastWrite) > Int64(configuration.idleTimeoutMillis) {
                server.counters.timeouts.add(1, ordering: .relaxed)
                closeConnection(conn)
            }
        }
    }

    private func timeOut(_ conn: ServerConnection, pool: HandlerPool?) {
        server.counters.timeouts.add(1, ordering: .relaxed)
        fail(conn, status: 408, reason: "request not received in time")
        flush(conn, pool: pool)
    }
}
