#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import SessionCore
import SystemSupport

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
    var muted: Bool { node.membership.isRejoining }

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
    func sendInline(_ fd: Int32, _ sealer: FrameSealer, _ frame: ReplicationFrame, sequence: UInt64? = nil) {
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
}
