#if canImport(Glibc)
import Glibc
#endif
import CEpoll
import Logging
import MiniHTTP

/// One event loop of the balancer: accepts from the shared listener, serves
/// its client connections and keeps its own pools of backend connections.
/// Everything but `wake()` runs on the loop's thread.
///
/// Event handlers only move bytes between sockets and parsers and put the
/// client connection concerned on the run queue; `progress(_:)` then advances
/// that connection's state machine as far as the buffers allow:
///
/// ```
/// idle ─head─► exchange: connecting ─► sending request ─► response streaming ─► idle (keep-alive)
///                  │ connect failure: next backend     │ failure before a response byte:
///                  ▼                                    ▼ retry if nothing was sent or read, or if retriable
///              503 when none is left                  502 / 504 otherwise; after the first byte: close
/// ```
final class ProxyLoop: @unchecked Sendable {
    private unowned let balancer: Balancer
    let index: Int
    private let configuration: BalancerConfiguration
    private let registry: BackendRegistry
    private let counters: BalancerCounters
    private let poller: EpollPoller
    private var sockets: [Int32: LoopSocket] = [:]
    private var clientCount = 0
    /// Idle keep-alive connections per backend (most recently used last).
    private var idle: [[BackendConnection]]
    private var nextID: UInt64 = 1
    private var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)
    private var runQueue: [ClientConnection] = []
    /// Connections that still have bytes to read after their turn's read budget: served next turn.
    private var deferred: [ClientConnection] = []
    /// Exchanges waiting for a backend slot (all backends at their cap), oldest first.
    private var waiting: [Exchange] = []
    private var listening = true
    private var random: SplitMix64
    private let highWater: Int
    private let maxAttempts: Int
    private let defaultHost: String

    init(balancer: Balancer, index: Int, listenFD: Int32) throws {
        self.balancer = balancer
        self.index = index
        configuration = balancer.configuration
        registry = balancer.registry
        counters = balancer.counters
        idle = Array(repeating: [], count: configuration.backends.count)
        random = SplitMix64(seed: UInt64.random(in: 0...UInt64.max))
        highWater = configuration.bufferHighWater
        maxAttempts = configuration.backends.count + 2
        defaultHost = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
        poller = try EpollPoller(listenFD: listenFD, logger: balancer.logger)
    }

    func closeDescriptors() { poller.closeDescriptors() }

    /// Wakes the loop from another thread.
    func wake() { poller.wake() }

    private var epollFD: Int32 { poller.epollFD }

    private var logger: Logger { balancer.logger }
    private var isStopping: Bool { balancer.stopping.load(ordering: .relaxed) }

    // MARK: - The loop

    func run() {
        var ready = [cepoll_ready](repeating: cepoll_ready(), count: 256)
        var nextSweep = monotonicMillis() + 100
        var graceDeadline: Int64? = nil
        while true {
            let n = poller.wait(&ready, timeoutMillis: deferred.isEmpty ? 100 : 0)
            for i in 0..<n {
                handle(ready[i])
            }
            if !deferred.isEmpty {
                let list = deferred
                deferred.removeAll(keepingCapacity: true)
                for c in list { schedule(c) }
            }
            drainRunQueue()
            let now = monotonicMillis()
            if !waiting.isEmpty {
                serveWaiting(now: now)
                drainRunQueue()
            }
            if isStopping {
                if listening {
                    listening = false
                    poller.stopListening()
                    graceDeadline = now + Int64(configuration.shutdownGraceMillis)
                    for case let c as ClientConnection in Array(sockets.values)
                    where c.exchange == nil && c.output.isEmpty && c.parser.isAtMessageBoundary {
                        closeClient(c)
                    }
                }
                if clientCount == 0 { break }
                if let deadline = graceDeadline, now >= deadline {
                    logger.warning("grace period over, closing connections", metadata: ["clients": "\(clientCount)"])
                    break
                }
            }
            if now >= nextSweep {
                nextSweep = now + 100
                sweep(now: now)
                drainRunQueue()
            }
        }
        for socket in Array(sockets.values) {
            if let c = socket as? ClientConnection { closeClient(c) }
        }
        for socket in Array(sockets.values) {
            if let b = socket as? BackendConnection { closeBackend(b) }
        }
        closeDescriptors()
    }

    private func handle(_ event: cepoll_ready) {
        switch event.token {
        case EpollPoller.listenToken:
            if listening { acceptSome() }
        case EpollPoller.wakeToken:
            poller.consumeWake()
        default:
            let fd = Int32(truncatingIfNeeded: event.token & 0xFFFF_FFFF)
            guard let socket = sockets[fd], socket.id == event.token >> 32 else { return }
            if let c = socket as? ClientConnection {
                clientEvent(c, event.events)
            } else if let b = socket as? BackendConnection {
                backendEvent(b, event.events)
            }
        }
    }

    private func schedule(_ c: ClientConnection) {
        guard c.isOpen, !c.queued else { return }
        c.queued = true
        runQueue.append(c)
    }

    private func drainRunQueue() {
        var i = 0
        while i < runQueue.count {
            let c = runQueue[i]
            i += 1
            c.queued = false
            progress(c)
        }
        runQueue.removeAll(keepingCapacity: runQueue.capacity <= 1024)
    }

    // MARK: - Accepting

    private func acceptSome() {
        poller.acceptPending(limit: 8) { fd in
            let open = balancer.openClients.add(1, ordering: .relaxed).newValue
            if open > configuration.maxClientConnections {
                balancer.openClients.subtract(1, ordering: .relaxed)
                counters.connectionsRejected.add(1, ordering: .relaxed)
                let busy = HTTPResponse.error(status: 503, code: "too_many_connections", message: "too many connections")
                _ = HTTPResponseSerializer.serialize(busy, keepAlive: false).withUnsafeBytes {
                    send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                }
                close(fd)
                return
            }
            counters.connectionsAccepted.add(1, ordering: .relaxed)
            Sockets.setNoDelay(fd)
            let c = ClientConnection(
                fd: fd, id: nextID, remoteAddress: Sockets.peerAddress(fd) ?? "unknown", limits: configuration.limits,
                now: monotonicMillis())
            nextID += 1
            sockets[fd] = c
            clientCount += 1
            if cepoll_ctl(epollFD, 1, fd, Self.socketEvents, c.token) != 0 {
                closeClient(c)
            }
        }
    }

    // MARK: - Readiness

    /// Every socket is registered once, edge-triggered, for all it may need: no
    /// `epoll_ctl` while it lives. Events only set `readable` / `hangup` and put the
    /// client connection concerned on the run queue; `progress(_:)` reads when the
    /// buffers allow, so a connection that must not read now (a pipelined request
    /// waiting, backpressure) is simply not read, and is reported again only when
    /// something new arrives (no spinning on level-triggered readiness, hang-ups included).
    static let socketEvents: UInt32 = CEPOLL_IN | CEPOLL_OUT | CEPOLL_RDHUP | CEPOLL_ET

    /// Reading a client pauses while its output or its request's upstream buffer is full,
    /// while its request waits for the response, and once it closed or will close.
    private func canRead(_ c: ClientConnection) -> Bool {
        guard c.isOpen, !c.peerClosed, !c.closeAfterWrite, c.output.pending < highWater else { return false }
        if let ex = c.exchange { return !ex.bodyDone && ex.upstream.pending < highWater }
        return true
    }

    /// Reading a backend pauses while the client's output or the response parser's buffer is full.
    private func canRead(_ b: BackendConnection) -> Bool {
        guard b.isOpen, b.isActive, !b.eof, let ex = b.exchange else { return false }
        return ex.client.output.pending < highWater && b.parser.bufferedByteCount < highWater
    }

    /// Records what an event says about reading.
    private func noteReadable(_ socket: LoopSocket, _ events: UInt32) {
        if events & (CEPOLL_IN | CEPOLL_RDHUP | CEPOLL_ERR | CEPOLL_HUP) != 0 { socket.readable = true }
        if events & (CEPOLL_RDHUP | CEPOLL_ERR | CEPOLL_HUP) != 0 { socket.hangup = true }
    }

    /// After a read of `count` bytes (> 0): a short read emptied the socket, and
    /// unless the peer closed (then the next read returns 0), the next arrival brings a new event.
    private func afterRead(_ socket: LoopSocket, _ count: Int) {
        if count < readBuffer.count && !socket.hangup { socket.readable = false }
    }

    // MARK: - Socket events

    private func clientEvent(_ c: ClientConnection, _ events: UInt32) {
        noteReadable(c, events)
        if events & (CEPOLL_ERR | CEPOLL_HUP) != 0 {
            c.hungUp = true
            if !canRead(c) {
                // Not reading now: nothing can reach the peer any more.
                abortClient(c)
                return
            }
        }
        schedule(c)
    }

    /// One read from the client into its parser (called by `progress`, which then goes on).
    private func readClient(_ c: ClientConnection) {
        let count = readBuffer.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
        if count < 0 {
            if errno == EINTR { return }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                c.readable = false
                return
            }
            abortClient(c)
            return
        }
        if count == 0 {
            c.readable = false
            c.peerClosed = true
            return
        }
        afterRead(c, count)
        let now = monotonicMillis()
        c.lastRead = now
        if c.exchange == nil && c.messageStart == 0 { c.messageStart = now }
        readBuffer.withUnsafeBytes { c.parser.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }

    private func backendEvent(_ b: BackendConnection, _ events: UInt32) {
        switch b.state {
        case .connecting:
            if events & (CEPOLL_OUT | CEPOLL_ERR | CEPOLL_HUP) != 0 { finishConnect(b) }
        case .idle:
            // A pooled connection that speaks or closes is of no further use.
            if events & (CEPOLL_IN | CEPOLL_RDHUP | CEPOLL_ERR | CEPOLL_HUP) != 0 { closeBackend(b) }
        case .active:
            noteReadable(b, events)
            if let ex = b.exchange { schedule(ex.client) }
        }
    }

    /// One read from the backend into its parser (called by `progress`, which then goes on).
    private func readBackend(_ b: BackendConnection) {
        let count = readBuffer.withUnsafeMutableBytes { recv(b.fd, $0.baseAddress, $0.count, 0) }
        if count < 0 {
            if errno == EINTR { return }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                b.readable = false
                return
            }
        }
        if count <= 0 {
            // Closed or reset: what arrived before is still parsed; no more events are needed.
            if count == 0 { b.finReceived = true } else { b.noteFailure(errno: errno) }
            b.readable = false
            b.eof = true
            if b.registered {
                b.registered = false
                _ = cepoll_ctl(epollFD, 2, b.fd, 0, 0)
            }
        } else {
            afterRead(b, count)
            b.bytesReceived += count
            b.lastRead = monotonicMillis()
            readBuffer.withUnsafeBytes { b.parser.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
    }

    private func finishConnect(_ b: BackendConnection) {
        var soError: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(b.fd, SOL_SOCKET, SO_ERROR, &soError, &len)
        if soError != 0 {
            logger.debug(
                "backend connect failed",
                metadata: ["backend": "\(registry.states[b.backend].configuration.name)", "errno": "\(soError)"])
            backendFailed(b, .connect)
            return
        }
        let now = monotonicMillis()
        b.state = .active
        b.lastWrite = now
        b.lastRead = now
        registry.connectSucceeded(b.backend)
        if let ex = b.exchange { schedule(ex.client) }
    }

    // MARK: - The state machine

    /// Advances a client connection and its exchange as far as the buffers allow.
    private func progress(_ c: ClientConnection) {
        var reads = 8  // per turn, for fairness: the rest waits for the next turn of the loop
        var moved = true
        while moved && c.isOpen {
            moved = false
            if reads > 0, let b = c.exchange?.backend, b.readable, canRead(b) {
                reads -= 1
                readBackend(b)
                moved = true
            }
            if c.isOpen, reads > 0, c.readable, canRead(c) {
                reads -= 1
                readClient(c)
                moved = true
            }
            if c.isOpen, let b = c.exchange?.backend, pumpResponse(b) { moved = true }
            if c.isOpen, pumpRequest(c) { moved = true }
            if c.isOpen, let b = c.exchange?.backend, flushBackend(b) { moved = true }
            if c.isOpen, flushClient(c) { moved = true }
        }
        guard c.isOpen else { return }
        if c.hungUp && !canRead(c) {
            // Read to the end after a hang-up (reported once, edge-triggered): nothing can reach the peer any more.
            abortClient(c)
            return
        }
        if let ex = c.exchange {
            if !ex.bodyDone { ex.noteBodyHeldUp(ex.upstream.pending >= highWater) }
            if let b = ex.backend, ex.requestSentAt == 0, ex.bodyDone, ex.upstream.isEmpty, b.isActive {
                ex.requestSentAt = monotonicMillis()
            }
        }
        if (c.readable && canRead(c)) || (c.exchange?.backend.map { $0.readable && canRead($0) } ?? false) {
            deferred.append(c)
        }
    }

    /// Pulls the next client parser event, if the buffers have room. True when something changed.
    private func pumpRequest(_ c: ClientConnection) -> Bool {
        guard !c.closeAfterWrite else { return false }
        if let ex = c.exchange {
            guard !ex.bodyDone, ex.upstream.pending < highWater else { return false }
        } else {
            guard c.output.pending < highWater else { return false }
        }
        let event: HTTPRequestParser.Event?
        do {
            event = try c.parser.next()
        } catch {
            requestFailed(c, error)
            return true
        }
        if let ex = c.exchange { return forwardRequestBody(c, ex, event) }
        switch event {
        case nil:
            if c.peerClosed && !c.closeAfterWrite {
                c.closeAfterWrite = true  // answer what was asked, then close
                return true
            }
            return false
        case .head(let head):
            beginExchange(c, head)
            return true
        case .body, .end:
            return false
        }
    }

    /// Passes an event of the request body on to the exchange's upstream buffer. True when something changed.
    private func forwardRequestBody(_ c: ClientConnection, _ ex: Exchange, _ event: HTTPRequestParser.Event?) -> Bool {
        switch event {
        case nil:
            if c.peerClosed {
                abortClient(c)  // the request can never be completed
                return true
            }
            return false
        case .body(let bytes):
            if ex.requestFraming == .chunked {
                var framed = OutputBuffer()
                HeaderRewriting.appendChunk(&framed, bytes)
                ex.appendUpstream(framed.bytes, replayLimit: configuration.replayBufferBytes)
            } else {
                ex.appendUpstream(bytes, replayLimit: configuration.replayBufferBytes)
            }
            return true
        case .end:
            if ex.requestFraming == .chunked {
                ex.appendUpstream(HeaderRewriting.lastChunk, replayLimit: configuration.replayBufferBytes)
            }
            ex.bodyDone = true
            return true
        case .head:
            return false  // cannot happen: a head comes only after .end
        }
    }

    private func beginExchange(_ c: ClientConnection, _ head: HTTPRequestHead) {
        counters.requests.add(1, ordering: .relaxed)
        let now = monotonicMillis()
        balancer.retryBudget.recordRequest(now: now)
        c.messageStart = 0
        let headBytes = HeaderRewriting.requestHead(
            head, clientAddress: c.remoteAddress, proto: configuration.forwardedProto, defaultHost: defaultHost,
            makeRequestID: { newRequestID() })
        let ex = Exchange(
            client: c, head: head, headBytes: headBytes, replayLimit: configuration.replayBufferBytes, now: now)
        c.exchange = ex
        let hasBody: Bool
        switch head.bodyFraming {
        case .none, .contentLength(0): hasBody = false
        default: hasBody = true
        }
        if !hasBody, case .end? = try? c.parser.next() {
            ex.bodyDone = true
        }
        if let limiter = balancer.rateLimiter, !limiter.allow(c.rateLimitKey, now: now) {
            counters.rateLimited.add(1, ordering: .relaxed)
            respondError(
                ex, status: 429, code: "rate_limited", message: "too many requests from this address",
                retryAfter: limiter.configuration.retryAfterSeconds)
        } else if head.path.hasPrefix(Balancer.adminPrefix) {
            respond(ex, balancer.adminResponseOnClientPort(head))
        } else if !balancer.localRoutes.isEmpty, let route = balancer.localRoutes.first(where: { head.path.hasPrefix($0.prefix) }) {
            respond(ex, route.respond(head))
        } else {
            startAttempt(ex)
        }
        if hasBody, head.expectsContinue, c.exchange === ex {
            c.output.append(contentsOf: "HTTP/1.1 100 Continue\r\n\r\n".utf8)
        }
    }

    /// Sends the exchange to the next backend that can take it, queues it when
    /// all are at their cap, or answers 503/502.
    private func startAttempt(_ ex: Exchange) {
        while true {
            let now = monotonicMillis()
            guard ex.attempts < maxAttempts else { return giveUp(ex) }
            let picked = registry.pick(excluding: ex.tried, now: now)
            guard case .backend(let backend) = picked else {
                return picked == .busy ? enqueue(ex, now: now) : giveUp(ex)
            }
            if ex.attempts > 0 && !balancer.retryBudget.tryRetry(now: now) {
                registry.release(backend)
                counters.retryBudgetRefusals.add(1, ordering: .relaxed)
                return giveUp(ex)
            }
            ex.attempts += 1
            if ex.attempts > 1 {
                counters.retries.add(1, ordering: .relaxed)
                registry.states[backend].retries.add(1, ordering: .relaxed)
            }
            ex.sentOnAttempt = false
            ex.requestSentAt = 0
            if let b = takeIdle(backend, probe: !(ex.retriable && ex.replay != nil)) ?? connect(backend, now: now) {
                attach(b, ex, now: now)
                return
            }
            registry.release(backend)
            leaveOut(backend, of: ex, now: now)
        }
    }

    /// No backend (or no retry) is left for the exchange: 502 when a backend had the request, else 503.
    private func giveUp(_ ex: Exchange) {
        if ex.timedOut {
            counters.gatewayTimeouts.add(1, ordering: .relaxed)
            respondError(ex, status: 504, code: "gateway_timeout", message: "no backend answered in time")
        } else if ex.everSent {
            counters.badGateway.add(1, ordering: .relaxed)
            respondError(ex, status: 502, code: "bad_gateway", message: "the backend failed before answering")
        } else {
            counters.noBackend.add(1, ordering: .relaxed)
            respondError(ex, status: 503, code: "no_backend", message: "no backend is available")
        }
    }

    // MARK: - The wait queue (backends at their cap)

    private func enqueue(_ ex: Exchange, now: Int64) {
        guard registry.queued.add(1, ordering: .relaxed).newValue <= configuration.maxQueuedRequests else {
            registry.queued.subtract(1, ordering: .relaxed)
            return rejectBusy(ex)
        }
        ex.isQueued = true
        if ex.queuedSince == 0 { ex.queuedSince = now }
        waiting.append(ex)
    }

    private func dequeue(_ ex: Exchange) {
        guard ex.isQueued else { return }
        ex.isQueued = false
        registry.queued.subtract(1, ordering: .relaxed)
        if let i = waiting.firstIndex(where: { $0 === ex }) { waiting.remove(at: i) }
    }

    private func rejectBusy(_ ex: Exchange) {
        counters.queueRejections.add(1, ordering: .relaxed)
        respondError(ex, status: 503, code: "backends_busy", message: "all backends are busy", retryAfter: 1)
    }

    /// Tries the waiting exchanges again, oldest first; those that waited too long get 503.
    private func serveWaiting(now: Int64) {
        let list = waiting
        waiting = []
        for ex in list where ex.isQueued {
            ex.isQueued = false
            registry.queued.subtract(1, ordering: .relaxed)
            if now - ex.queuedSince > Int64(configuration.queueTimeoutMillis) {
                rejectBusy(ex)
            } else {
                startAttempt(ex)
            }
            schedule(ex.client)
        }
    }

    /// A connection to `backend` failed for the exchange: the backend is left out
    /// for a while, and for good by this exchange.
    private func leaveOut(_ backend: Int, of ex: Exchange, now: Int64) {
        registry.connectFailed(backend, now: now)
        ex.tried |= 1 << UInt64(backend)
    }

    private func attach(_ b: BackendConnection, _ ex: Exchange, now: Int64) {
        b.exchange = ex
        ex.backend = b
        b.parser.expectResponse(toHEAD: ex.isHEAD)
        b.skippingInterim = false
        b.responseKeepAlive = false
        b.bytesReceived = 0
        b.lastRead = now
        b.lastWrite = now
        registry.states[b.backend].requests.add(1, ordering: .relaxed)
        schedule(ex.client)
    }

    private func detach(_ b: BackendConnection) {
        guard let ex = b.exchange else { return }
        b.exchange = nil
        if ex.backend === b { ex.backend = nil }
        registry.release(b.backend)
        if registry.queued.load(ordering: .relaxed) > 0 { balancer.wakeLoops() }
    }

    /// Writes queued request bytes to the backend. True when bytes were written or the connection failed.
    private func flushBackend(_ b: BackendConnection) -> Bool {
        guard b.isActive, let ex = b.exchange, ex.upstream.pending > 0 else { return false }
        let (written, failed) = ex.upstream.send(to: b.fd)
        if written > 0 {
            ex.sentOnAttempt = true
            ex.everSent = true
        }
        if failed {
            b.noteFailure(errno: errno)
            backendFailed(b, .broken)
            return true
        }
        if written > 0 { b.lastWrite = monotonicMillis() }
        return written > 0
    }

    /// Moves response events from the backend's parser to the client's output. True when something changed.
    private func pumpResponse(_ b: BackendConnection) -> Bool {
        guard b.isActive, let ex = b.exchange else { return false }
        let c = ex.client
        var moved = false
        while c.output.pending < highWater && b.exchange === ex {
            var event: HTTPResponseParser.Event?
            do {
                event = try b.parser.next()
            } catch {
                badResponse(b, ex, error)
                return true
            }
            if event == nil && b.eof {
                do {
                    event = try b.parser.finish()
                } catch {
                    backendFailed(b, .broken)  // closed in the middle of a response
                    return true
                }
                if event == nil {
                    backendFailed(b, .broken)  // closed before a response
                    return true
                }
            }
            guard let event else { return moved }
            moved = true
            switch event {
            case .head(let head):
                if head.isInterim {
                    if head.status == 101 {
                        badResponse(b, ex, HTTPParseError(status: 502, reason: "protocol switch not supported"))
                        return true
                    }
                    b.skippingInterim = true
                } else {
                    startResponse(ex, b, head)
                }
            case .body(let bytes):
                if b.skippingInterim { continue }
                switch ex.clientFraming {
                case .chunked: HeaderRewriting.appendChunk(&c.output, bytes)
                case .asIs, .untilClose: c.output.append(bytes)
                }
            case .end:
                if b.skippingInterim {
                    b.skippingInterim = false
                    continue
                }
                finishExchange(ex, b)
                return true
            }
        }
        return moved
    }

    private func startResponse(_ ex: Exchange, _ b: BackendConnection, _ head: HTTPResponseHead) {
        let c = ex.client
        ex.responseStarted = true
        b.responseKeepAlive = head.keepAlive
        registry.states[b.backend].responses.add(1, ordering: .relaxed)
        let keep = ex.clientKeepAlive && ex.bodyDone && !c.peerClosed && !isStopping
        let rewritten = HeaderRewriting.responseHead(head, clientVersion: ex.clientVersion, keepAlive: keep)
        ex.clientFraming = rewritten.framing
        ex.clientKeepAlive = rewritten.keepAlive
        c.output.append(rewritten.bytes)
    }

    private func finishExchange(_ ex: Exchange, _ b: BackendConnection) {
        let c = ex.client
        if ex.clientFraming == .chunked { c.output.append(HeaderRewriting.lastChunk) }
        let reusable = b.responseKeepAlive && ex.bodyDone && ex.upstream.isEmpty && !b.eof && !b.hangup
            && b.parser.bufferedByteCount == 0 && !isStopping
        detach(b)
        if reusable { release(b) } else { closeBackend(b) }
        endExchange(c, keepAlive: ex.clientKeepAlive && ex.clientFraming != .untilClose)
    }

    /// The exchange is over (answered); the connection goes on with the next request or closes.
    private func endExchange(_ c: ClientConnection, keepAlive: Bool) {
        if let ex = c.exchange { dequeue(ex) }
        c.exchange = nil
        if !keepAlive || isStopping {
            c.closeAfterWrite = true
        } else {
            c.messageStart = c.parser.isAtMessageBoundary ? 0 : monotonicMillis()
        }
        schedule(c)
    }

    /// Answers the exchange with an error of the balancer's own (only before any response byte).
    private func respondError(_ ex: Exchange, status: Int, code: String, message: String, retryAfter: Int? = nil) {
        var response = HTTPResponse.error(status: status, code: code, message: message)
        if let retryAfter { response.headers.add(name: "Retry-After", value: "\(retryAfter)") }
        respond(ex, response)
    }

    /// Answers the exchange with a response of the balancer's own (only before any response byte).
    private func respond(_ ex: Exchange, _ response: HTTPResponse) {
        let c = ex.client
        guard c.isOpen, c.exchange === ex, !ex.responseStarted else { return }
        if let b = ex.backend {
            detach(b)
            closeBackend(b)
        }
        let keep = ex.clientKeepAlive && ex.bodyDone && !c.peerClosed && !isStopping
        c.output.append(
            HTTPResponseSerializer.serialize(response, keepAlive: keep, headOnly: ex.isHEAD, version: ex.clientVersion))
        endExchange(c, keepAlive: keep)
    }

    /// The client's request is malformed or over a limit.
    private func requestFailed(_ c: ClientConnection, _ error: HTTPParseError) {
        counters.badRequests.add(1, ordering: .relaxed)
        logger.debug("bad request", metadata: ["status": "\(error.status)", "reason": "\(error.reason)"])
        if let ex = c.exchange {
            if ex.responseStarted {
                counters.aborted.add(1, ordering: .relaxed)
                abortClient(c)
                return
            }
            ex.clientKeepAlive = false
            respondError(ex, status: error.status, code: Self.errorCode(error.status), message: error.reason)
            return
        }
        let response = HTTPResponse.error(status: error.status, code: Self.errorCode(error.status), message: error.reason)
        c.output.append(HTTPResponseSerializer.serialize(response, keepAlive: false))
        c.closeAfterWrite = true
    }

    static func errorCode(_ status: Int) -> String {
        switch status {
        case 408: "request_timeout"
        case 413: "body_too_large"
        case 431: "headers_too_large"
        case 501: "not_implemented"
        case 505: "version_not_supported"
        default: "bad_request"
        }
    }

    enum Failure {
        /// The connection could not be made.
        case connect
        /// Written to or read from, the connection broke or closed.
        case broken
        /// The backend did not answer or read in time.
        case timeout
    }

    /// A backend connection failed while carrying an exchange: retry, answer, or cut the client off.
    private func backendFailed(_ b: BackendConnection, _ failure: Failure) {
        let ex = b.exchange
        let reused = b.reused
        let backend = b.backend
        // Asked of the socket before it is closed; only a request with no response byte yet can be unread.
        let unread = failure == .broken && ex?.sentOnAttempt == true && b.bytesReceived == 0 && b.closedBeforeRequestArrived
        detach(b)
        closeBackend(b)
        guard let ex, ex.client.isOpen, ex.client.exchange === ex else { return }
        let c = ex.client
        let state = registry.states[backend]
        let now = monotonicMillis()
        defer { schedule(c) }
        if ex.responseStarted {
            state.failures.add(1, ordering: .relaxed)
            counters.aborted.add(1, ordering: .relaxed)
            abortClient(c)
            return
        }
        switch failure {
        case .connect:
            leaveOut(backend, of: ex, now: now)
            startAttempt(ex)
        case .timeout where ex.isSafeMethod && ex.bodyDone && ex.replay != nil:
            // A safe method (GET, HEAD, OPTIONS) changes nothing: a stalled backend's request is asked elsewhere.
            // Not ejected for it (a slow endpoint is not a dead backend); left out for this request only.
            state.failures.add(1, ordering: .relaxed)
            ex.tried |= 1 << UInt64(backend)
            ex.timedOut = true
            ex.upstream = OutputBuffer(ex.replay!)
            startAttempt(ex)
        case .timeout:
            state.failures.add(1, ordering: .relaxed)
            counters.gatewayTimeouts.add(1, ordering: .relaxed)
            ex.clientKeepAlive = ex.clientKeepAlive && ex.bodyDone
            respondError(ex, status: 504, code: "gateway_timeout", message: "the backend did not answer in time")
        case .broken:
            if !ex.sentOnAttempt {
                // Nothing of this request reached the backend: any method may go elsewhere.
                if !reused { leaveOut(backend, of: ex, now: now) }
                startAttempt(ex)
            } else if unread || ex.retriable, let replay = ex.replay {
                // Sent, no answer: sent again when the backend provably did not read it (it closed the
                // connection, e.g. at the end of a drain, while the request was on its way), or when it is
                // safe to repeat.
                if !reused { leaveOut(backend, of: ex, now: now) }
                if unread {
                    counters.unreadRetries.add(1, ordering: .relaxed)
                    logger.debug(
                        "backend closed the connection without reading the request; sending it again",
                        metadata: ["backend": "\(registry.states[backend].configuration.name)", "method": "\(ex.method)"])
                }
                ex.upstream = OutputBuffer(replay)
                startAttempt(ex)
            } else {
                if !reused { registry.connectFailed(backend, now: now) }
                counters.badGateway.add(1, ordering: .relaxed)
                respondError(
                    ex, status: 502, code: "bad_gateway",
                    message: "the backend closed the connection before answering; the request was not repeated")
            }
        }
    }

    /// The backend's response is malformed: never retried (the backend may have acted on the request).
    private func badResponse(_ b: BackendConnection, _ ex: Exchange, _ error: HTTPParseError) {
        logger.warning(
            "bad response from backend",
            metadata: ["backend": "\(registry.states[b.backend].configuration.name)", "reason": "\(error.reason)"])
        registry.states[b.backend].failures.add(1, ordering: .relaxed)
        detach(b)
        closeBackend(b)
        let c = ex.client
        if ex.responseStarted {
            counters.aborted.add(1, ordering: .relaxed)
            abortClient(c)
            return
        }
        counters.badGateway.add(1, ordering: .relaxed)
        respondError(ex, status: 502, code: "bad_gateway", message: "the backend sent an invalid response")
    }

    /// Writes what it can to the client; closes when done and the connection must close.
    private func flushClient(_ c: ClientConnection) -> Bool {
        let (written, failed) = c.output.send(to: c.fd)
        if failed {
            if c.exchange?.responseStarted == true { counters.aborted.add(1, ordering: .relaxed) }
            abortClient(c)
            return true
        }
        let wrote = written > 0
        if wrote { c.lastWrite = monotonicMillis() }
        if c.output.isEmpty && c.exchange == nil {
            if c.closeAfterWrite || (isStopping && c.parser.isAtMessageBoundary) {
                closeClient(c)
                return true
            }
        }
        return wrote
    }

    // MARK: - Backend connections and the pool

    /// A pooled connection to `backend` that is still open, if any. A pooled connection
    /// that spoke or closed is closed by its event (see `backendEvent`), but a close can
    /// still be in flight: a request that may be retried finds out on first use (a failure
    /// on a reused connection is retried), one that may not (`probe`) is protected by a
    /// non-blocking peek, one syscall, first.
    private func takeIdle(_ backend: Int, probe: Bool) -> BackendConnection? {
        while let b = idle[backend].popLast() {
            b.state = .active  // out of the pool
            if probe {
                var byte: UInt8 = 0
                let n = recv(b.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                guard n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) else {
                    closeBackend(b)  // closed, reset, or unexpected bytes: not usable
                    continue
                }
            }
            b.reused = true
            b.readable = false
            return b
        }
        return nil
    }

    /// Starts a non-blocking connect; nil when it failed at once.
    private func connect(_ backend: Int, now: Int64) -> BackendConnection? {
        let state = registry.states[backend]
        let address = state.address
        let fd = socket(
            address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            logger.error("socket() failed", metadata: ["errno": "\(errno)"])
            return nil
        }
        Sockets.setNoDelay(fd)
        let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        let connState: BackendConnection.State
        if rc == 0 {
            connState = .active
        } else if errno == EINPROGRESS {
            connState = .connecting(deadline: now + Int64(configuration.backendConnectTimeoutMillis))
        } else {
            logger.debug("backend connect failed", metadata: ["backend": "\(state.configuration.name)", "errno": "\(errno)"])
            close(fd)
            return nil
        }
        let b = BackendConnection(
            fd: fd, id: nextID, backend: backend, state: connState, maxHeadBytes: configuration.maxResponseHeadBytes,
            now: now)
        nextID += 1
        guard cepoll_ctl(epollFD, 1, fd, Self.socketEvents, b.token) == 0 else {
            close(fd)
            return nil
        }
        sockets[fd] = b
        state.connectionsOpened.add(1, ordering: .relaxed)
        if rc == 0 { registry.connectSucceeded(backend) }
        return b
    }

    /// Keeps a backend connection for the next request.
    private func release(_ b: BackendConnection) {
        // A hang-up seen while the response was read ends the connection here: with
        // edge-triggered events no second event would tell the pool.
        guard idle[b.backend].count < configuration.maxIdlePerBackend, b.registered, !b.hangup else {
            closeBackend(b)
            return
        }
        b.state = .idle(since: monotonicMillis())
        b.reused = true
        b.parser.reset()
        idle[b.backend].append(b)
    }

    private func closeBackend(_ b: BackendConnection) {
        guard b.isOpen else { return }
        if b.isIdle, let i = idle[b.backend].firstIndex(where: { $0 === b }) {
            idle[b.backend].remove(at: i)
        }
        detach(b)
        b.isOpen = false
        if sockets[b.fd] === b { sockets[b.fd] = nil }
        if b.registered { _ = cepoll_ctl(epollFD, 2, b.fd, 0, 0) }
        close(b.fd)
    }

    // MARK: - Client connections

    /// Closes the client connection at once (and its exchange's backend connection).
    private func abortClient(_ c: ClientConnection) {
        closeClient(c)
    }

    private func closeClient(_ c: ClientConnection) {
        guard c.isOpen else { return }
        if let b = c.exchange?.backend {
            closeBackend(b)
        }
        if let ex = c.exchange { dequeue(ex) }
        c.exchange = nil
        c.isOpen = false
        if sockets[c.fd] === c { sockets[c.fd] = nil }
        _ = cepoll_ctl(epollFD, 2, c.fd, 0, 0)
        close(c.fd)
        clientCount -= 1
        balancer.openClients.subtract(1, ordering: .relaxed)
    }

    // MARK: - Timeouts

    private func sweep(now: Int64) {
        for socket in Array(sockets.values) where socket.isOpen {
            if let c = socket as? ClientConnection {
                sweepClient(c, now: now)
            } else if let b = socket as? BackendConnection {
                sweepBackend(b, now: now)
            }
        }
    }

    private func sweepClient(_ c: ClientConnection, now: Int64) {
        if c.output.pending > 0 && now - c.lastWrite > Int64(configuration.clientWriteTimeoutMillis) {
            counters.clientTimeouts.add(1, ordering: .relaxed)
            if c.exchange?.responseStarted == true { counters.aborted.add(1, ordering: .relaxed) }
            abortClient(c)
            return
        }
        if let ex = c.exchange {
            if ex.bodyOverdue(now: now, timeoutMillis: configuration.clientBodyTimeoutMillis) {
                counters.clientTimeouts.add(1, ordering: .relaxed)
                logger.info(
                    "request body not received in time",
                    metadata: [
                        "client": "\(c.remoteAddress)", "method": "\(ex.method)",
                        "timeout_ms": "\(configuration.clientBodyTimeoutMillis)",
                    ])
                if ex.responseStarted {
                    counters.aborted.add(1, ordering: .relaxed)
                    abortClient(c)
                } else {
                    ex.clientKeepAlive = false
                    respondError(ex, status: 408, code: "request_timeout", message: "request body not received in time")
                }
            }
        } else if c.messageStart != 0 {
            if now - c.messageStart > Int64(configuration.clientHeaderTimeoutMillis) && !c.closeAfterWrite {
                counters.clientTimeouts.add(1, ordering: .relaxed)
                let response = HTTPResponse.error(
                    status: 408, code: "request_timeout", message: "request head not received in time")
                c.output.append(HTTPResponseSerializer.serialize(response, keepAlive: false))
                c.closeAfterWrite = true
                schedule(c)
            }
        } else if c.output.isEmpty
            && now - max(c.lastRead, c.lastWrite) > Int64(configuration.clientIdleTimeoutMillis)
        {
            closeClient(c)
        }
    }

    private func sweepBackend(_ b: BackendConnection, now: Int64) {
        switch b.state {
        case .connecting(let deadline):
            if now >= deadline {
                logger.debug(
                    "backend connect timed out", metadata: ["backend": "\(registry.states[b.backend].configuration.name)"])
                backendFailed(b, .connect)
            }
        case .idle(let since):
            // A backend taken out (health checks, drain, ejection) gets its pooled connections back: a
            // draining node waits for them to close, and they would be stale when it returns.
            if now - since > Int64(configuration.poolIdleTimeoutMillis) || !registry.states[b.backend].isAvailable(now: now) {
                closeBackend(b)
            }
        case .active:
            guard let ex = b.exchange else { return }
            if !ex.responseStarted {
                if ex.requestSentAt != 0 && now - ex.requestSentAt > Int64(configuration.backendResponseTimeoutMillis) {
                    backendFailed(b, .timeout)
                } else if ex.upstream.pending > 0 && now - b.lastWrite > Int64(configuration.backendIdleTimeoutMillis) {
                    backendFailed(b, .timeout)
                }
            } else if ex.client.output.pending < highWater
                && now - b.lastRead > Int64(configuration.backendIdleTimeoutMillis)
            {
                backendFailed(b, .timeout)
            }
        }
    }

    // MARK: - Helpers

    /// 128 random bits as 32 hex digits.
    private func newRequestID() -> String {
        var out = [UInt8]()
        out.reserveCapacity(32)
        for _ in 0..<2 {
            var v = random.next()
            for _ in 0..<16 {
                let d = UInt8(v & 0xF)
                out.append(d < 10 ? 48 + d : 87 + d)
                v >>= 4
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension BackendConnection.State {
    var isConnecting: Bool { if case .connecting = self { true } else { false } }
}
