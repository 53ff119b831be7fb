#if canImport(Glibc)
import Glibc
#endif
import Logging
import MiniHTTP
import SystemSupport

/// One event loop of the balancer: accepts from the shared listener, serves
/// its client connections and keeps its own pools of backend connections.
/// Everything but `wake()` runs on the loop's thread.
///
/// Event handlers only move bytes between sockets and parsers and put the
/// client connection concerned on the run queue; `progress(_:)` then advances
/// that connection as far as the buffers allow, its exchange's decisions made by
/// a `ProxyExchangeStateMachine` (a value, tested without sockets):
///
/// ```
/// idle ─head─► exchange: connecting ─► sending request ─► response streaming ─► idle (keep-alive)
///                  │ connect failure: next backend     │ failure before a response byte:
///                  ▼                                    ▼ retry if nothing was sent or read, or if retriable
///              503 when none is left                  502 / 504 otherwise; after the first byte: close
/// ```
final class ProxyLoop: @unchecked Sendable {
    /// Unchecked: the balancer outlives its loops (each loop's thread holds the balancer until
    /// `run` returns), and a checked reference costs an atomic retain on every access.
    unowned(unsafe) let balancer: Balancer
    let index: Int
    let configuration: BalancerConfiguration
    let registry: BackendRegistry
    let counters: BalancerCounters
    let poller: EpollPoller
    var sockets: [Int32: LoopSocket] = [:]
    var clientCount = 0
    /// Idle keep-alive connections per backend (most recently used last).
    var idle: [[BackendConnection]]
    var nextID: UInt64 = 1
    var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)
    var runQueue: [ClientConnection] = []
    /// Connections that still have bytes to read after their turn's read budget: served next turn.
    var deferred: [ClientConnection] = []
    /// Exchanges waiting for a backend slot (all backends at their cap), oldest first.
    var waiting: [Exchange] = []
    var listening = true
    var random: SplitMix64
    let highWater: Int
    /// The limits the exchanges' state machines decide by.
    let exchangeLimits: ProxyExchangeStateMachine.Limits
    let defaultHost: String

    init(balancer: Balancer, index: Int, listenFD: Int32) throws {
        self.balancer = balancer
        self.index = index
        configuration = balancer.configuration
        registry = balancer.registry
        counters = balancer.counters
        idle = Array(repeating: [], count: configuration.backends.count)
        random = SplitMix64(seed: UInt64.random(in: 0...UInt64.max))
        highWater = configuration.bufferHighWater
        exchangeLimits = ProxyExchangeStateMachine.Limits(
            replayBytes: configuration.replayBufferBytes, maxAttempts: configuration.backends.count + 2,
            clientBodyTimeoutMillis: Int64(configuration.clientBodyTimeoutMillis),
            backendResponseTimeoutMillis: Int64(configuration.backendResponseTimeoutMillis),
            backendIdleTimeoutMillis: Int64(configuration.backendIdleTimeoutMillis),
            queueTimeoutMillis: Int64(configuration.queueTimeoutMillis))
        defaultHost = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
        poller = try EpollPoller(listenFD: listenFD, logger: balancer.logger)
    }

    func closeDescriptors() { poller.closeDescriptors() }

    /// Wakes the loop from another thread.
    func wake() { poller.wake() }


    var logger: Logger { balancer.logger }
    var isStopping: Bool { balancer.stopping.load(ordering: .relaxed) }

    // MARK: - The loop

    func run() {
        var ready = ReadyEvents(capacity: 256)
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
        for fd in balancer.spreader.end(index) {  // handed over as this loop ended
            close(fd)
            balancer.openClients.subtract(1, ordering: .relaxed)
        }
        for socket in Array(sockets.values) {
            if let c = socket as? ClientConnection { closeClient(c) }
        }
        for socket in Array(sockets.values) {
            if let b = socket as? BackendConnection { closeBackend(b) }
        }
        closeDescriptors()
    }

    func handle(_ event: ReadyEvent) {
        switch event.token {
        case EpollPoller.listenToken:
            if listening { acceptSome() }
        case EpollPoller.wakeToken:
            poller.consumeWake()
            for fd in balancer.spreader.adopt(by: index) { adopt(fd) }
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

    func schedule(_ c: ClientConnection) {
        guard c.isOpen, !c.queued else { return }
        c.queued = true
        runQueue.append(c)
    }

    func drainRunQueue() {
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

    func acceptSome() {
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
            if !balancer.spreader.handOff(fd, acceptedBy: index, wake: balancer.wakeLoop) { adopt(fd) }
        }
    }

    /// Serves an accepted client connection on this loop (counted on it by the spreader already).
    func adopt(_ fd: Int32) {
        Sockets.setNoDelay(fd)
        let c = ClientConnection(
            fd: fd, id: nextID, remoteAddress: Sockets.peerAddress(fd) ?? "unknown", limits: configuration.limits,
            now: monotonicMillis())
        nextID += 1
        sockets[fd] = c
        clientCount += 1
        // Edge-triggered: bytes that arrived before this report at once. One handed over while
        // this loop began to stop is served like the others then (closed at the grace deadline at the latest).
        if !poller.add(fd, Self.socketEvents, token: c.token) { closeClient(c) }
    }

    // MARK: - Readiness

    /// Every socket is registered once, edge-triggered, for all it may need: no
    /// `epoll_ctl` while it lives. Events only set `readable` / `hangup` and put the
    /// client connection concerned on the run queue; `progress(_:)` reads when the
    /// buffers allow, so a connection that must not read now (a pipelined request
    /// waiting, backpressure) is simply not read, and is reported again only when
    /// something new arrives (no spinning on level-triggered readiness, hang-ups included).
    static let socketEvents: EpollEvents = [.readable, .writable, .peerClosed, .edgeTriggered]

    /// Reading a client pauses while its output or its request's upstream buffer is full,
    /// while its request waits for the response, and once it closed or will close.
    func canRead(_ c: ClientConnection) -> Bool {
        guard c.isOpen, !c.peerClosed, !c.closeAfterWrite, c.output.pending < highWater else { return false }
        if let ex = c.exchange { return !ex.machine.bodyDone && ex.upstream.pending < highWater }
        return true
    }

    /// Reading a backend pauses while the client's output or the response parser's buffer is full.
    func canRead(_ b: BackendConnection) -> Bool {
        guard b.isOpen, b.isActive, !b.eof, let ex = b.exchange else { return false }
        return ex.client.output.pending < highWater && b.parser.bufferedByteCount < highWater
    }

    /// Records what an event says about reading.
    func noteReadable(_ socket: LoopSocket, _ events: EpollEvents) {
        if !events.isDisjoint(with: [.readable, .peerClosed, .error, .hangUp]) { socket.readable = true }
        if !events.isDisjoint(with: [.peerClosed, .error, .hangUp]) { socket.hangup = true }
    }

    /// After a read of `count` bytes (> 0): a short read emptied the socket, and
    /// unless the peer closed (then the next read returns 0), the next arrival brings a new event.
    func afterRead(_ socket: LoopSocket, _ count: Int) {
        if count < readBuffer.count && !socket.hangup { socket.readable = false }
    }

    // MARK: - Socket events

    func clientEvent(_ c: ClientConnection, _ events: EpollEvents) {
        noteReadable(c, events)
        if !events.isDisjoint(with: [.error, .hangUp]) {
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
    func readClient(_ c: ClientConnection) {
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

    func backendEvent(_ b: BackendConnection, _ events: EpollEvents) {
        switch b.state {
        case .connecting:
            if !events.isDisjoint(with: [.writable, .error, .hangUp]) { finishConnect(b) }
        case .idle:
            // A pooled connection that speaks or closes is of no further use.
            if !events.isDisjoint(with: [.readable, .peerClosed, .error, .hangUp]) { closeBackend(b) }
        case .active:
            noteReadable(b, events)
            if let ex = b.exchange { schedule(ex.client) }
        }
    }

    /// One read from the backend into its parser (called by `progress`, which then goes on).
    func readBackend(_ b: BackendConnection) {
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
                poller.remove(b.fd)
            }
        } else {
            afterRead(b, count)
            b.bytesReceived += count
            b.lastRead = monotonicMillis()
            readBuffer.withUnsafeBytes { b.parser.append(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
    }

    func finishConnect(_ b: BackendConnection) {
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
}

extension BackendConnection.State {
    var isConnecting: Bool { if case .connecting = self { true } else { false } }
}
