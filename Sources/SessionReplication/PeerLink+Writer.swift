#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import SessionCore
import SystemSupport

// The writer thread: connects, says hello, sends what is queued and the pings.
extension PeerLink {
    // MARK: Writer thread

    func runWriter() {
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

    enum ConnectOutcome {
        case connected(SecureConnection, generation: Int)
        case isSelf
        case failed(String)
    }

    /// Connects and runs the handshake; on success the link is `connected` and a resync is due.
    func connect() -> ConnectOutcome {
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

    func writeUntilBroken(fd: Int32, sealer: FrameSealer, generation: Int) {
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
    func batchFrames(_ queue: [Pending]) -> [ReplicationFrame] {
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
    func resyncFrames(sequence: UInt64) -> [ReplicationFrame] {
        let items = node.allItems()
        state.withLock { $0.itemsSent += items.count }
        node.counters.add(\.resyncs)
        return chunkedBatches(items, chunkBytes: node.configuration.snapshotChunkBytes, sequence: sequence)
            .map { ReplicationFrame(type: .update, payload: $0) }
    }

    func closeConnection(fd: Int32, generation: Int) {
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
}
