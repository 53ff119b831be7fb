#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import SessionCore
import Synchronization
import SystemSupport

// The inbound side of a replication node: accepting peers, their handshake and admission,
// merging and answering what they send, and passing a lost peer's last changes on.
extension ReplicationNode {

    func acceptLoop(_ listener: Int32) {
        while true {
            let fd = Sockets.accept(listener)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if isStopped { break }
                core.logger.error("replication accept failed: errno \(errno)")
                usleep(100_000)
                continue
            }
            // A new connection is unauthenticated: it waits in `pending`, apart from the peers' slots;
            // when that is full, the oldest pending one goes (a peer's handshake takes a round trip).
            let (admitted, evicted) = state.withLock { s -> (Bool, Bool) in
                guard !s.stopped else { return (false, false) }
                var evicted = false
                if s.pending.count >= configuration.maxPendingHandshakes {
                    // Under the lock, while its thread cannot have closed it: its thread sees the end, and closes it.
                    shutdownSocket(s.pending.removeFirst())
                    evicted = true
                }
                s.pending.append(fd)
                return (true, evicted)
            }
            if evicted { core.counters.add(\.handshakesEvicted) }
            guard admitted else {
                close(fd)
                continue
            }
            startThread { [self] in serveInbound(fd) }
        }
        close(listener)
    }

    /// Moves an authenticated connection from `pending` to `inbound`; false
    /// when it was evicted meanwhile or `maxInboundConnections` are open.
    private func admit(_ fd: Int32, _ peer: PeerIdentity) -> Bool {
        let (admitted, full) = state.withLock { s -> (Bool, Bool) in
            guard let index = s.pending.firstIndex(of: fd) else { return (false, false) }
            s.pending.remove(at: index)
            guard !s.stopped, s.inbound.count < configuration.maxInboundConnections else { return (false, !s.stopped) }
            s.inbound[fd] = peer
            return (true, false)
        }
        if full {
            core.counters.add(\.connectionsRefused)
            core.logger.warning("refused a replication connection: \(configuration.maxInboundConnections) are open")
        }
        return admitted
    }

    /// Whether a peer announcing `address` may connect (`acceptedPeers`, else `peers`; this node's own too).
    private func accepts(_ address: String) -> Bool {
        guard let address = PeerAddress(address) else { return false }
        return (configuration.acceptedPeers ?? configuration.peers).contains(address)
            || address == PeerAddress(host: configuration.host, port: port)
    }

    /// One peer's connection to this node: the handshake, then its changes,
    /// fetches and state-transfer requests, each answered on the same socket.
    private func serveInbound(_ fd: Int32) {
        let remote = Sockets.peerAddress(fd) ?? "?"
        Sockets.setNoDelay(fd)
        Sockets.setSendTimeout(fd, millis: configuration.peerIdleTimeoutMillis)
        var peerName = "unidentified peer at \(remote)"
        var peerID: UInt32?
        var peer: PeerIdentity?
        let fences = configuration.fences
        var admitted = false
        // peerHealth's readers: key lookups when a peer is in doubt, and fencing (who is still heard).
        let watchesSilence = configuration.keyLookups == .whenPeerInDoubt || configuration.fences
        var recent = RecentChanges(
            windowNanos: UInt64(configuration.relayWindowMillis) * 1_000_000, maxEntries: Self.maxRelayEntries)
        do throws(ConnectionEnd) {
            var connection = try ReplicationHandshake.accept(
                fd: fd, hello: core.hello, secret: core.secret,
                deadline: monotonicNanos() + UInt64(configuration.handshakeTimeoutMillis) * 1_000_000)
            let hello = connection.peer
            if hello.nodeID == core.hello.nodeID && hello.incarnation == core.hello.incarnation {
                throw .closed  // this node connected to itself; its link learns it from our hello
            }
            guard accepts(hello.address) else {
                core.counters.add(\.unknownPeersRefused)
                core.logger.warning(
                    "refused the replication connection from \(hello.nodeName) (\(remote)): \(hello.address) is not a configured peer")
                throw .closed
            }
            let identity = PeerIdentity(hello)
            peerName = "\(hello.nodeName) (\(remote))"
            if fences && core.membership.isFenced(identity) {
                refuseFenced(fd, sealer: connection.sealer, identity, name: peerName)
                throw .closed
            }
            guard admit(fd, identity) else { throw .closed }
            admitted = true
            peer = identity
            if fences { supersede(identity) }
            // With fencing, a peer silent for fenceAfterMillis is declared dead (see the catch below).
            let silenceMillis = fences
                ? min(configuration.peerIdleTimeoutMillis, configuration.fenceAfterMillis)
                : configuration.peerIdleTimeoutMillis
            Sockets.setReceiveTimeout(fd, millis: silenceMillis)
            peerID = hello.nodeID
            var frames = connection.pending
            while true {
                if fences && core.membership.isFenced(identity) { throw .fenced }
                try process(frames, fd: fd, sealer: connection.sealer, recent: &recent)
                frames = try connection.reader.frames()
                if watchesSilence { core.peerHealth.heard(from: hello.nodeID, at: monotonicNanos()) }
            }
        } catch {
            // An evicted connection (see acceptLoop) ends however its handshake stood: counted there only.
            let evicted = !admitted && !state.withLock { $0.pending.contains(fd) }
            func closed(counting counter: WritableKeyPath<ReplicationCounters.Values, Int>, nothingApplied: Bool = false) {
                core.counters.add(counter)
                let message = "closed the replication connection from \(peerName): \(error)"
                if nothingApplied {
                    core.logger.warning("\(message); nothing applied")
                } else {
                    core.logger.notice("\(message)")
                }
            }
            switch error {
            case _ where evicted: break
            case .closed: break
            case .failed(let code) where fences && (code == EAGAIN || code == EWOULDBLOCK):
                if let peer {
                    declareDead(peer, reason: "it sent nothing for \(configuration.fenceAfterMillis) ms")
                }
            case .failed: core.logger.notice("replication connection from \(peerName) ended: \(error)")
            case .handshakeTimeout: closed(counting: \.handshakesTimedOut)
            case .fenced: closed(counting: \.fencedConnectionsRefused)
            case .badFrame: closed(counting: \.framesRejected, nothingApplied: true)
            case .protocolViolation: closed(counting: \.protocolViolations, nothingApplied: true)
            }
        }
        state.withLock { s in
            if admitted {
                s.inbound[fd] = nil
            } else if let index = s.pending.firstIndex(of: fd) {
                s.pending.remove(at: index)
            }
        }
        close(fd)
        if let peerID, !isStopped {
            core.peerHealth.lostInbound(from: peerID, at: monotonicNanos())
            let (sessions, keys, complete) = recent.lastChanges()
            relay(sessions: sessions, keys: keys, complete: complete, of: peerID, name: peerName)
        }
    }

    /// The most sessions and keys one peer's relay remembers; beyond, a loss resyncs the others.
    static let maxRelayEntries = 200_000

    /// Sends every other connected peer this node's state of the sessions and
    /// records a lost peer changed lately (see `RecentChanges`); when it
    /// changed more than is remembered, a full resync instead.
    private func relay(sessions: [SessionID], keys: [String], complete: Bool, of origin: UInt32, name: String) {
        let items: [[UInt8]] =
            sessions.compactMap { store.fullState(of: $0).map { ReplicationItem.session($0).encoded } }
            + keys.compactMap { store.completedRecord(key: $0).map { ReplicationItem.record($0).encoded } }
        guard !items.isEmpty || !complete else { return }
        let chunks = chunked(items, chunkBytes: configuration.snapshotChunkBytes)  // a frame each, not one per item
        var relayed = 0
        for link in links where link.peerNodeID != origin && link.isConnected {
            if complete {
                for chunk in chunks where link.enqueue(chunk.bytes, itemCount: chunk.count) != nil { relayed += chunk.count }
            } else {
                link.requestResync()
            }
        }
        core.counters.add(\.relays)
        core.counters.add(\.itemsRelayed, relayed)
        core.logger.notice(
            complete
                ? "the connection from \(name) ended: sent the other peers the \(items.count) sessions and records it changed lately"
                : "the connection from \(name) ended: it changed more than the relay remembers; resyncing the other peers")
    }

    /// Applies and answers a peer's frames; one acknowledgement for all updates among them.
    private func process(_ frames: [ReplicationFrame], fd: Int32, sealer: FrameSealer, recent: inout RecentChanges)
        throws(ConnectionEnd)
    {
        var replies: [ReplicationFrame] = []
        var acknowledge: UInt64?
        func flush() throws(ConnectionEnd) {
            if let sequence = acknowledge {
                replies.append(ReplicationFrame(type: .ack, payload: AckMessage(sequence: sequence).encode()))
                acknowledge = nil
            }
            guard !replies.isEmpty else { return }
            guard Sockets.writeAll(fd, sealer.seal(replies)) else { throw .failed(errno) }
            replies = []
        }
        for frame in frames {
            switch frame.type {
            case .snapshotRequest:
                try flush()
                let request: SnapshotRequest
                do throws(WireError) {
                    request = try frame.payload.isEmpty ? SnapshotRequest(onlyIfReady: false) : SnapshotRequest.decode(frame.payload)
                } catch {
                    throw .protocolViolation("snapshotRequest: \(error.reason)")
                }
                try sendSnapshot(fd: fd, sealer: sealer, onlyIfReady: request.onlyIfReady)
                continue
            case .fenced:
                do throws(WireError) {
                    receivedFencedNotice(try FencedNotice.decode(frame.payload), from: "the peer at \(Sockets.peerAddress(fd) ?? "?")")
                } catch {
                    throw .protocolViolation("fenced: \(error.reason)")
                }
                continue
            case .hello, .ack, .fetchReply, .snapshotChunk, .snapshotEnd, .keyLookupReply, .keyConfirmation:
                throw .protocolViolation("unexpected \(frame.type) frame on an inbound connection")
            case .update, .fetch, .ping, .keyLookup:
                break
            }
            do throws(WireError) {
                switch frame.type {
                case .update:
                    let batch = try UpdateBatch.decode(frame.payload)  // all decoded before any is applied
                    core.merge(batch.items)
                    recent.note(batch.items, now: monotonicNanos())
                    if batch.sequence > 0 { acknowledge = max(acknowledge ?? 0, batch.sequence) }
                case .fetch:
                    let request = try FetchRequest.decode(frame.payload)
                    let reply = FetchReply(
                        id: request.id, request: request.request, update: store.fullState(of: request.id))
                    replies.append(ReplicationFrame(type: .fetchReply, payload: reply.encode()))
                    core.counters.add(\.fetchesServed)
                case .keyLookup:
                    let lookup = try KeyLookup.decode(frame.payload)
                    let reply = KeyLookupReply(key: lookup.key, request: lookup.request, answer: store.lookUp(key: lookup.key))
                    replies.append(ReplicationFrame(type: .keyLookupReply, payload: reply.encode()))
                    core.counters.add(\.keyLookupsServed)
                default:
                    break
                }
            } catch {
                throw .protocolViolation("\(frame.type): \(error.reason)")
            }
        }
        try flush()
    }

    private func sendSnapshot(fd: Int32, sealer: FrameSealer, onlyIfReady: Bool) throws(ConnectionEnd) {
        let senderReady = store.isReady
        let items = onlyIfReady && !senderReady ? [] : core.allItems()
        for payload in chunkedBatches(items, chunkBytes: configuration.snapshotChunkBytes, sequence: 0) {
            guard Sockets.writeAll(fd, sealer.seal(ReplicationFrame(type: .snapshotChunk, payload: payload)))
            else { throw .failed(errno) }
        }
        let end = SnapshotEnd(itemCount: UInt64(items.count), senderReady: senderReady)
        guard Sockets.writeAll(fd, sealer.seal(ReplicationFrame(type: .snapshotEnd, payload: end.encode())))
        else { throw .failed(errno) }
        core.counters.add(\.snapshotsServed)
    }
}
