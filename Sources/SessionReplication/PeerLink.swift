#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import MiniHTTP
import SessionCore

/// This node's outbound connection to one peer: it sends this node's
/// changes (and fetch and state-transfer requests) and reads the peer's
/// acknowledgements and replies.
///
/// A writer thread connects (with backoff), says hello, then drains a
/// bounded queue into `update` frames — several queued changes per frame
/// when they pile up. A reader thread on the same socket reads acks,
/// fetch replies and state-transfer chunks. Every new connection starts
/// with a full resync (this node's whole state), so nothing lost while
/// disconnected, or dropped from a full queue, stays lost.
final class PeerLink: Sendable {
    enum Phase: Sendable, Equatable {
        case connecting
        case connected
        /// The address is this node's own: nothing to do.
        case isSelf
        case stopped
    }

    /// Where a state transfer requested from this peer stands.
    enum Transfer: Sendable, Equatable {
        case none
        /// Asked for; with `replacingState`, this node's state is dropped
        /// when the first of it arrives (a rejoin: only a ready peer sends any).
        case requested(replacingState: Bool)
        /// Done; `senderReady` tells whether the peer had its full state itself.
        case done(senderReady: Bool, items: UInt64)
    }

    struct Pending {
        var sequence: UInt64
        var itemCount: Int
        var bytes: [UInt8]
    }

    /// A question sent to the peer whose answer a request thread waits for.
    enum Question: Sendable {
        case fetch(SessionID)
        case lookup(String)
    }

    struct State {
        var phase: Phase = .connecting
        /// Bumped by every connection; a reader only reports on its own.
        var generation = 0
        var fd: Int32 = -1
        /// Seals what this connection sends (set by the handshake).
        var sealer: FrameSealer?
        var readerDone = true
        var broken = false
        var peer: HelloMessage?
        /// The incarnation this node's hello announced on the current connection.
        var ownIncarnation: UInt64?
        var queue: [Pending] = []
        var queuedBytes = 0
        var control: [ReplicationFrame] = []
        var needsResync = false
        /// The last sequence number given out, and the highest the peer acknowledged.
        var lastSequence: UInt64 = 0
        var ackedSequence: UInt64 = 0
        /// The highest sequence handed to the kernel whole (async mode answers after it: see
        /// `waitUntilWritten`).
        var writtenSequence: UInt64 = 0
        /// `lastSequence` when the current connection was made: changes numbered up to it went
        /// out on an earlier one, and count as acknowledged only once the peer acknowledged
        /// something sent on this one (its resync first, which holds them).
        var connectFloor: UInt64 = 0
        /// Sync mode: missed an acknowledgement deadline; not waited on until it catches up.
        var lagging = false
        /// When it missed the deadline (nil when lagging only because it is catching up after connecting).
        var laggingSince: UInt64?
        /// When an acknowledgement last moved `ackedSequence` on: a slow peer that keeps
        /// acknowledging is lagging, not dead.
        var lastAckProgress: UInt64 = 0
        /// Whether this connection's peer was declared dead already.
        var declaredDead = false
        var transfer: Transfer = .none
        var lastError: String?
        /// A thread is writing to the socket (the writer, or a request sending its change inline).
        var writing = false
        /// The rest of a frame a request thread could not send at once: it goes first.
        var unsent: [UInt8] = []
        /// The sequence of the change in `unsent`, if it is one.
        var unsentSequence: UInt64 = 0
        /// Changes sent (resyncs included).
        var itemsSent = 0
        /// Questions sent on this connection and not answered yet, by request number.
        var questions: [UInt64: Question] = [:]
        /// When the last connection was lost.
        var lostAt: UInt64?

        /// Nothing is queued or being written: a request thread may send its frame itself.
        var socketIsFree: Bool {
            !writing && !broken && !needsResync && queue.isEmpty && control.isEmpty && unsent.isEmpty
        }

        /// Whether the writer has something to send; while this node rejoins (`muted`), only
        /// control frames go out: its state is not to be replicated until replaced by a peer's.
        func hasWork(muted: Bool) -> Bool {
            !control.isEmpty || !unsent.isEmpty || (!muted && (needsResync || !queue.isEmpty))
        }
    }

    /// Condition 0: work for the writer; condition 1: acknowledgements (sync waiters).
    static let writerCondition = 0
    static let ackCondition = 1

    let address: PeerAddress
    let node: ReplicationNodeCore
    let state = ConditionLock(State(), conditions: 2)

    /// Noticing a pause before sending what was queued before it (see `writeUntilBroken`).
    let pauseDetector: PauseDetector?

    init(address: PeerAddress, node: ReplicationNodeCore, pauseDetector: PauseDetector? = nil) {
        self.address = address
        self.node = node
        self.pauseDetector = pauseDetector
    }

    var phase: Phase { state.withLock { $0.phase } }
    /// The peer's node id, once it said hello.
    var peerNodeID: UInt32? { state.withLock { $0.peer?.nodeID } }

    /// Whether this node is rejoining: its changes wait (see `State.hasWork`).
    private var muted: Bool { node.membership.isRejoining }

    /// Whether the peer may have died (see `ReplicationNode.mayHaveLostAPeer`):
    /// not connected, lagging, its connection lost within `windowNanos`, or
    /// its close already waiting on the socket for the reader.
    func isInDoubt(now: UInt64, windowNanos: UInt64) -> Bool {
        let (phase, lagging, lostAt, fd) = state.withLock { ($0.phase, $0.lagging, $0.lostAt, $0.fd) }
        switch phase {
        case .isSelf, .stopped: return false
        case .connecting: return true
        case .connected: break
        }
        if lagging { return true }
        if let lostAt, lostAt >= now || now - lostAt < windowNanos { return true }
        let readHangUp: Int16 = 0x2000  // POLLRDHUP (Linux; hidden behind _GNU_SOURCE in Glibc's module)
        var poll = pollfd(fd: fd, events: readHangUp, revents: 0)
        return Glibc.poll(&poll, 1, 0) > 0 && poll.revents & (readHangUp | Int16(POLLHUP | POLLERR | POLLNVAL)) != 0
    }

    /// Replaces whatever is queued by a full resync of this node's state.
    func requestResync() {
        let connected = state.withLock { s -> Bool in
            guard s.phase == .connected else { return false }
            s.queue = []
            s.queuedBytes = 0
            s.needsResync = true
            return true
        }
        if connected { state.signal(Self.writerCondition) }
    }
    var isConnected: Bool { state.withLock { $0.phase == .connected } }
    var transfer: Transfer { state.withLock { $0.transfer } }

    /// A consistent view for metrics and status pages.
    struct Status: Sendable {
        var address: PeerAddress
        var phase: Phase
        var peerName: String?
        var lagging: Bool
        var queuedBytes: Int
        var unacknowledged: UInt64
        var lastError: String?
        var itemsSent: Int
    }

    var status: Status {
        state.withLock {
            Status(
                address: address, phase: $0.phase, peerName: $0.peer?.nodeName, lagging: $0.lagging,
                queuedBytes: $0.queuedBytes, unacknowledged: $0.lastSequence - $0.ackedSequence, lastError: $0.lastError,
                itemsSent: $0.itemsSent)
        }
    }

    func start() {
        startThread { [self] in runWriter() }
    }

    func stop() {
        state.withLock { s in
            s.phase = .stopped
            if s.fd >= 0 { shutdownSocket(s.fd) }
        }
        state.broadcast(Self.writerCondition)
        state.broadcast(Self.ackCondition)
    }

    // MARK: Sending

    /// Sends encoded items, or queues them for the writer; returns their
    /// sequence number, or nil when the peer is not connected (the resync at
    /// the next connection covers them). A full queue is dropped and replaced
    /// by a resync.
    ///
    /// When nothing is queued and no one is writing, the calling thread sends
    /// the frame itself without blocking (what the socket does not take at
    /// once is left for the writer): no thread hand-off on the common path.
    func enqueue(_ bytes: [UInt8], itemCount: Int) -> UInt64? {
        let result = state.withLock { s -> (UInt64?, overflowed: Bool, inline: (Int32, FrameSealer)?) in
            guard s.phase == .connected, let sealer = s.sealer else { return (nil, false, nil) }
            s.lastSequence += 1
            if s.socketIsFree && !muted {
                s.writing = true
                s.itemsSent += itemCount
                return (s.lastSequence, false, (s.fd, sealer))
            }
            var overflowed = false
            if s.queuedBytes + bytes.count > node.configuration.maxQueueBytes {
                s.queue = []
                s.queuedBytes = 0
                s.needsResync = true
                overflowed = true
            } else {
                s.queue.append(Pending(sequence: s.lastSequence, itemCount: itemCount, bytes: bytes))
                s.queuedBytes += bytes.count
            }
            return (s.lastSequence, overflowed, nil)
        }
        if let (fd, sealer) = result.inline, let sequence = result.0 {
            sendInline(
                fd, sealer,
                ReplicationFrame(
                    type: .update, payload: UpdateBatch.encode(sequence: sequence, itemCount: itemCount, encodedItems: bytes)),
                sequence: sequence)
        }
        if result.overflowed {
            node.counters.add(\.queueOverflows)
            node.logger.warning(
                "replication queue to \(address) is full; dropped it, a full resync follows",
                metadata: ["limit_bytes": "\(node.configuration.maxQueueBytes)"])
        }
        if result.0 != nil { state.signal(Self.writerCondition) }
        return result.0
    }

    /// Asks the peer for a session's full state (read-your-writes); false when not connected.
    func fetch(_ id: SessionID, request: UInt64) -> Bool {
        send(
            control: ReplicationFrame(type: .fetch, payload: FetchRequest(id: id, request: request).encode()),
            question: (request, .fetch(id)))
    }

    /// Asks the peer what it knows of an idempotency key; false when not connected, or
    /// lagging unless `evenIfLagging` (after this node was frozen, when its lagging marks are its own doing).
    func lookUp(key: String, request: UInt64, evenIfLagging: Bool = false) -> Bool {
        send(
            control: ReplicationFrame(type: .keyLookup, payload: KeyLookup(key: key, request: request).encode()),
            question: (request, .lookup(key)), unlessLagging: !evenIfLagging)
    }

    /// Sends a control frame when connected — and, with `unlessLagging`, not
    /// lagging; false otherwise. A `question` is remembered until answered:
    /// if the connection is lost first, the store gets an empty answer at
    /// once (`answerUnanswered`), so no one waits for a dead peer.
    /// Like `enqueue`, the calling thread sends it itself when the socket is free.
    @discardableResult
    func send(
        control frame: ReplicationFrame, question: (UInt64, Question)? = nil, unlessLagging: Bool = false
    ) -> Bool {
        let result = state.withLock { s -> (queued: Bool, inline: (Int32, FrameSealer)?) in
            guard s.phase == .connected, let sealer = s.sealer, !s.broken, !(unlessLagging && s.lagging) else {
                return (false, nil)
            }
            if let (request, question) = question { s.questions[request] = question }
            if s.socketIsFree {
                s.writing = true
                return (true, (s.fd, sealer))
            }
            s.control.append(frame)
            return (true, nil)
        }
        if let (fd, sealer) = result.inline { sendInline(fd, sealer, frame) }
        if result.queued { state.signal(Self.writerCondition) }
        return result.queued
    }

    /// Sends a frame on the calling thread without blocking, after `enqueue`
    /// or `send(control:)` set `writing`; what the socket does not take at
    /// once is left for the writer.
    private func sendInline(_ fd: Int32, _ sealer: FrameSealer, _ frame: ReplicationFrame, sequence: UInt64? = nil) {
        let bytes = sealer.seal(frame)  // sealed while this thread holds `writing`: in socket order
        let sent = sendWithoutBlocking(fd, bytes)
        state.withLock { s in
            s.writing = false
            if sent < bytes.count {
                s.unsent = Array(bytes[sent...])
                s.unsentSequence = sequence ?? 0
            } else if let sequence {
                s.writtenSequence = max(s.writtenSequence, sequence)
            }
        }
    }

    /// Async mode: waits until the change numbered `sequence` was handed to the kernel whole, or
    /// the deadline, or the connection ended; true when it was. A change that is answered only
    /// once written reaches the peer even if this process freezes right after answering.
    func waitUntilWritten(_ sequence: UInt64, until deadlineNanos: UInt64) -> Bool {
        state.wait(
            on: Self.ackCondition, until: deadlineNanos,
            for: { $0.writtenSequence >= sequence || $0.phase != .connected || $0.broken },
            then: { s, _ in s.writtenSequence >= sequence })
    }

    // MARK: Writer thread

    private func runWriter() {
        var backoff = node.configuration.reconnectBackoffMillis.first
        while true {
            if case .stopped = phase { return }
            switch connect() {
            case .connected(let connection, let generation):
                backoff = node.configuration.reconnectBackoffMillis.first
                node.logger.info("replicating to \(address) (\(connection.peer.nodeName))")
                let fd = connection.reader.fd
                startThread { [self] in runReader(connection, generation: generation) }
                writeUntilBroken(fd: fd, sealer: connection.sealer, generation: generation)
                closeConnection(fd: fd, generation: generation)
            case .isSelf:
                node.logger.debug("peer address \(address) is this node; skipped")
                return
            case .failed(let reason):
                let first = state.withLock { s -> Bool in
                    defer { s.lastError = reason }
                    return s.lastError != reason
                }
                if first { node.logger.notice("cannot replicate to \(address): \(reason); retrying") }
            }
            if case .stopped = phase { return }
            usleep(UInt32(min(backoff, 60_000)) * 1000)
            backoff = min(backoff * 2, node.configuration.reconnectBackoffMillis.max)
        }
    }

    private enum ConnectOutcome {
        case connected(SecureConnection, generation: Int)
        case isSelf
        case failed(String)
    }

    /// Connects and runs the handshake; on success the link is `connected` and a resync is due.
    private func connect() -> ConnectOutcome {
        let config = node.configuration
        let fd: Int32
        do {
            fd = try Sockets.connect(
                host: address.host, port: address.port, timeoutMillis: Int32(config.connectTimeoutMillis))
        } catch {
            return .failed("\(error)")
        }
        Sockets.setNoDelay(fd)
        Sockets.setSendTimeout(fd, millis: config.connectTimeoutMillis)
        let connection: SecureConnection
        let mine = node.hello
        do {
            connection = try ReplicationHandshake.connect(
                fd: fd, hello: mine, secret: node.secret,
                deadline: monotonicNanos() + UInt64(config.handshakeTimeoutMillis) * 1_000_000)
        } catch {
            close(fd)
            if case .badFrame = error { node.counters.add(\.framesRejected) }
            return .failed("handshake: \(error)")
        }
        let hello = connection.peer
        if hello.nodeID == mine.nodeID {
            close(fd)
            if hello.incarnation == mine.incarnation {
                state.withLock { $0.phase = .isSelf }
                return .isSelf
            }
            node.logger.error(
                "peer \(address) ('\(hello.nodeName)') has this node's id \(hello.nodeID): node ids must be unique")
            return .failed("duplicate node id \(hello.nodeID)")
        }
        // After the handshake: no receive timeout (acks come only when we send), a send timeout against a stalled peer.
        Sockets.setReceiveTimeout(fd, millis: 0)
        Sockets.setSendTimeout(fd, millis: config.peerIdleTimeoutMillis)
        return state.withLock { s -> ConnectOutcome in
            guard s.phase != .stopped else {
                close(fd)
                return .failed("stopped")
            }
            s.phase = .connected
            s.generation += 1
            s.fd = fd
            s.sealer = connection.sealer
            s.peer = hello
            s.ownIncarnation = mine.incarnation
            s.broken = false
            s.readerDone = false
            s.queue = []
            s.queuedBytes = 0
            s.control = []
            s.needsResync = true
            s.ackedSequence = s.lastSequence  // nothing of an earlier connection is awaited any more
            s.connectFloor = s.lastSequence
            // A peer that (re)joins is busy taking in the resync: sync writes wait for it only once it
            // acknowledged everything sent so far (see the ack handler), not on its first, slow answers.
            s.lagging = true
            s.laggingSince = nil
            s.declaredDead = false
            s.lastError = nil
            s.writing = false
            s.unsent = []
            return .connected(connection, generation: s.generation)
        }
    }

    /// What the writer takes from the state in one go (`unsentSequence`: the change `unsent` ends).
    private typealias Work = (
        unsent: [UInt8], unsentSequence: UInt64, control: [ReplicationFrame], queue: [Pending], resync: UInt64?
    )

    private func writeUntilBroken(fd: Int32, sealer: FrameSealer, generation: Int) {
        let config = node.configuration
        let pingNanos = UInt64(config.pingIntervalMillis) * 1_000_000
        var lastSend = monotonicNanos()
        let fences = config.fences
        while true {
            if fences { checkUnresponsive(now: monotonicNanos()) }
            // Woken from a pause (SIGSTOP)? Then the node rejoins (PauseDetector's onPause, on
            // this thread) and mutes its links before anything queued before the pause goes out.
            pauseDetector?.noticeIfOverdue(now: monotonicNanos())
            let muted = self.muted
            let work = state.wait(
                on: Self.writerCondition, until: lastSend + pingNanos,
                for: { s in s.broken || s.phase != .connected || (!s.writing && s.hasWork(muted: muted)) },
                then: { s, _ -> Work?? in
                    guard !s.broken, s.phase == .connected else { return nil }
                    // The ping deadline passed while a request sends its change: busy, not idle.
                    if s.writing { return .some(nil) }
                    if muted {
                        // Rejoining: control frames only (or a ping); the changes and resync wait.
                        s.writing = true
                        defer {
                            s.unsent = []
                            s.unsentSequence = 0
                            s.control = []
                        }
                        return (s.unsent, s.unsentSequence, s.control, [], nil)
                    }
                    s.writing = true
                    // A resync's number is taken before its snapshot: every change numbered
                    // below it is in the store by then, so its ack may release them all.
                    var resync: UInt64? = nil
                    if s.needsResync {
                        s.lastSequence += 1
                        resync = s.lastSequence
                    }
                    defer {
                        s.unsent = []
                        s.unsentSequence = 0
                        s.control = []
                        s.queue = []
                        s.queuedBytes = 0
                        s.needsResync = false
                    }
                    s.itemsSent += s.needsResync ? 0 : s.queue.reduce(0) { $0 + $1.itemCount }
                    return (s.unsent, s.unsentSequence, s.control, s.queue, resync)
                })
            guard let claimed = work else { return }
            guard let work = claimed else {
                lastSend = monotonicNanos()
                continue
            }
            // A resync comes first and replaces the queue: its snapshot, taken after the
            // queue was, holds every queued change, and a peer must never get a node's
            // later change before its earlier ones (read tokens count on that order).
            var frames = work.control
            frames += work.resync.map(resyncFrames) ?? batchFrames(work.queue)
            if frames.isEmpty && work.unsent.isEmpty { frames = [ReplicationFrame(type: .ping)] }
            let sent = Sockets.writeAll(fd, work.unsent + sealer.seal(frames))  // sealed while holding `writing`
            let error = errno
            let written = max(work.unsentSequence, work.resync ?? 0, work.queue.last?.sequence ?? 0)
            state.withLock { s in
                s.writing = false
                if !sent { s.lastError = "send failed: errno \(error)" }
                if sent { s.writtenSequence = max(s.writtenSequence, written) }
            }
            if sent && written > 0 { state.broadcast(Self.ackCondition) }
            guard sent else { return }
            lastSend = monotonicNanos()
        }
    }

    /// Queued changes as `update` frames: as many per frame as fit, each
    /// frame with the sequence number of its last change.
    private func batchFrames(_ queue: [Pending]) -> [ReplicationFrame] {
        var frames: [ReplicationFrame] = []
        var bytes: [UInt8] = []
        var count = 0
        var sequence: UInt64 = 0
        func flush() {
            guard count > 0 else { return }
            frames.append(ReplicationFrame(
                type: .update, payload: UpdateBatch.encode(sequence: sequence, itemCount: count, encodedItems: bytes)))
            bytes = []
            count = 0
        }
        for pending in queue {
            if count > 0 && bytes.count + pending.bytes.count > node.configuration.snapshotChunkBytes { flush() }
            bytes.append(contentsOf: pending.bytes)
            count += pending.itemCount
            sequence = pending.sequence
        }
        flush()
        return frames
    }

    /// This node's whole state as `update` frames numbered `sequence`.
    private func resyncFrames(sequence: UInt64) -> [ReplicationFrame] {
        let items = node.allItems()
        state.withLock { $0.itemsSent += items.count }
        node.counters.add(\.resyncs)
        return chunkedBatches(items, chunkBytes: node.configuration.snapshotChunkBytes, sequence: sequence)
            .map { ReplicationFrame(type: .update, payload: $0) }
    }

    private func closeConnection(fd: Int32, generation: Int) {
        shutdownSocket(fd)
        // The reader owns reads on fd until it reports done; only then is fd closed (and its number reusable).
        // No request thread may still be sending on fd either.
        state.wait(
            on: Self.writerCondition, until: .max,
            for: { ($0.readerDone || $0.generation != generation) && !$0.writing }, then: { _, _ in () })
        close(fd)
        let reason = state.withLock { s -> String? in
            if s.phase == .connected { s.phase = .connecting }
            s.fd = -1
            s.sealer = nil
            s.lostAt = monotonicNanos()
            if case .requested = s.transfer { s.transfer = .none }
            return s.lastError
        }
        state.broadcast(Self.ackCondition)
        if case .stopped = phase { return }
        node.logger.notice("replication connection to \(address) lost: \(reason ?? "closed"); reconnecting")
    }

    // MARK: Reader thread

    private func runReader(_ connection: SecureConnection, generation: Int) {
        var reader = connection.reader
        var end: ConnectionEnd = .closed
        do {
            for frame in connection.pending { try handle(frame) }
            while true {
                for frame in try reader.frames() { try handle(frame) }
            }
        } catch {
            end = error
        }
        if case .badFrame = end { node.counters.add(\.framesRejected) }
        let unanswered = state.withLock { s -> [UInt64: Question] in
            guard s.generation == generation else { return [:] }
            s.broken = true
            s.readerDone = true
            if case .closed = end {} else { s.lastError = "\(end)" }
            defer { s.questions = [:] }
            return s.questions
        }
        state.broadcast(Self.writerCondition)
        answerUnanswered(unanswered)
    }

    /// The peer is gone: its questions get empty answers, so their requests go on without it.
    private func answerUnanswered(_ questions: [UInt64: Question]) {
        for (request, question) in questions {
            switch question {
            case .fetch(let id): node.store.mergeFetchReply(id, request: request, nil)
            case .lookup(let key): node.store.mergeLookupReply(KeyLookupReply(key: key, request: request, answer: .unknown))
            }
        }
    }

    private func handle(_ frame: ReplicationFrame) throws(ConnectionEnd) {
        switch frame.type {
        case .hello, .update, .fetch, .snapshotRequest, .ping, .keyLookup, .keyConfirmation:
            throw .protocolViolation("unexpected \(frame.type) frame on an outbound connection")
        case .ack, .fetchReply, .snapshotChunk, .snapshotEnd, .keyLookupReply, .fenced:
            break
        }
        do throws(WireError) {
            switch frame.type {
            case .ack:
                let ack = try AckMessage.decode(frame.payload)
                let caughtUp = state.withLock { s -> Bool in
                    let acked = max(s.ackedSequence, min(ack.sequence, s.lastSequence))
                    if acked > s.ackedSequence { s.lastAckProgress = monotonicNanos() }
                    s.ackedSequence = acked
                    guard s.lagging, s.ackedSequence == s.lastSequence else { return false }
                    s.lagging = false
                    s.laggingSince = nil
                    return true
                }
                state.broadcast(Self.ackCondition)
                if caughtUp { node.logger.notice("peer \(address) caught up; sync writes wait for it again") }
            case .fetchReply:
                let reply = try FetchReply.decode(frame.payload)
                guard state.withLock({ $0.questions.removeValue(forKey: reply.request) }) != nil else { return }
                node.store.mergeFetchReply(reply.id, request: reply.request, reply.update)
            case .keyLookupReply:
                let reply = try KeyLookupReply.decode(frame.payload)
                guard state.withLock({ $0.questions.removeValue(forKey: reply.request) }) != nil else { return }
                node.store.mergeLookupReply(reply)
            case .snapshotChunk:
                let items = try UpdateBatch.decode(frame.payload).items
                if takeReplacingState() { node.owner?.replaceState(from: address) }
                node.merge(items)
            case .snapshotEnd:
                let end = try SnapshotEnd.decode(frame.payload)
                if end.senderReady && takeReplacingState() { node.owner?.replaceState(from: address) }
                state.withLock { $0.transfer = .done(senderReady: end.senderReady, items: end.itemCount) }
            case .fenced:
                node.owner?.receivedFencedNotice(try FencedNotice.decode(frame.payload), from: address.description)
            case .hello, .update, .fetch, .snapshotRequest, .ping, .keyLookup, .keyConfirmation:
                break
            }
        } catch {
            throw .protocolViolation("\(frame.type): \(error)")
        }
    }
}
