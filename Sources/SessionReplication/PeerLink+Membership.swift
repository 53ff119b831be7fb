import SessionCore
import SystemSupport

// A link's part in sync writes and membership: waiting for acknowledgements (and declaring a
// peer dead that stops giving them), state transfers for joins and rejoins, fencing notices.
extension PeerLink {
    /// Asks the peer for its full state (the reader records the outcome in `transfer`).
    /// With `onlyIfReady`, a peer that is not ready sends none; with `replacingState`
    /// (a rejoin; implies `onlyIfReady`), this node's own state is dropped when it arrives.
    func requestSnapshot(onlyIfReady: Bool = false, replacingState: Bool = false) -> Bool {
        state.withLock { $0.transfer = .requested(replacingState: replacingState) }
        return send(
            control: ReplicationFrame(
                type: .snapshotRequest, payload: SnapshotRequest(onlyIfReady: onlyIfReady || replacingState).encode()))
    }

    /// Whether a state transfer was asked of this peer and is not done.
    var transferPending: Bool {
        if case .requested = transfer { return true }
        return false
    }

    /// Closes the current connection (the writer connects again, with this node's
    /// current hello): a rejoining node's peers must see its new incarnation.
    func reconnect() {
        state.withLock { s in
            if s.phase == .connected, s.fd >= 0 { shutdownSocket(s.fd) }
        }
    }

    /// Drops the full resync this connection would start with: after a rejoin this node's state
    /// is its peers' own, and sending it back (often the whole store) would only delay the
    /// acknowledgements its next writes wait for. Changes queued since still go.
    func skipPendingResync() {
        state.withLock { $0.needsResync = false }
    }

    /// Wakes the writer (a rejoin ended: what waited may go).
    func wakeWriter() { state.signal(Self.writerCondition) }

    /// Tells the peer that its incarnation was declared dead (sent when connected, else dropped:
    /// its next connection is refused with the same notice).
    func sendFencedNotice(_ notice: FencedNotice) {
        send(control: ReplicationFrame(type: .fenced, payload: notice.encode()))
    }

    /// The incarnation this node announced on the current connection (nil when not connected).
    var connectedAs: UInt64? { state.withLock { $0.phase == .connected ? $0.ownIncarnation : nil } }

    /// The peer that answered on this connection, once connected.
    var peerIdentity: PeerIdentity? { state.withLock { $0.peer.map(PeerIdentity.init) } }

    /// How a sync write's wait for this peer ended.
    enum AckOutcome: Equatable {
        case acknowledged
        /// Not waited for: lagging (unless asked to) or not connected.
        case skipped
        /// The deadline passed (the peer is then marked lagging).
        case timedOut
    }

    /// Sync mode: waits until the peer acknowledged `sequence`, the deadline,
    /// or — unless `evenIfLagging` — the peer lagging or disconnected.
    func waitForAck(_ sequence: UInt64, until deadlineNanos: UInt64, evenIfLagging: Bool = false) -> AckOutcome {
        let (outcome, markedLagging) = state.wait(
            on: Self.ackCondition, until: deadlineNanos,
            for: { $0.ackedSequence >= sequence || ($0.lagging && !evenIfLagging) || $0.phase != .connected },
            then: { s, done -> (AckOutcome, Bool) in
                if s.ackedSequence >= sequence {
                    // Released by a reconnection, not by the peer: not an acknowledgement.
                    let confirmed = sequence > s.connectFloor || s.ackedSequence > s.connectFloor
                    return (confirmed ? .acknowledged : .skipped, false)
                }
                if done { return (.skipped, false) }
                if s.lagging { return (.timedOut, false) }  // marked by another write meanwhile
                s.lagging = true
                s.laggingSince = monotonicNanos()
                return (.timedOut, true)
            })
        if markedLagging {
            node.counters.add(\.syncTimeouts)
            node.logger.warning(
                "peer \(address) did not acknowledge within \(node.configuration.syncTimeoutMillis) ms; not waiting for it until it catches up")
        }
        return outcome
    }

    /// With fencing on: declares the peer dead once it has lagged since a missed deadline, with no
    /// acknowledgement moving on, for `fenceAfterMillis` (frozen or cut off; the node fences its
    /// incarnation). A peer behind a slow link keeps acknowledging: lagging, never declared dead.
    func checkUnresponsive(now: UInt64) {
        let fenceNanos = UInt64(node.configuration.fenceAfterMillis) * 1_000_000
        let peer = state.withLock { s -> PeerIdentity? in
            guard s.lagging, !s.declaredDead, let since = s.laggingSince,
                now >= max(since, s.lastAckProgress) + fenceNanos,
                let peer = s.peer
            else { return nil }
            s.declaredDead = true
            return PeerIdentity(peer)
        }
        if let peer {
            node.owner?.declareDead(
                peer, reason: "it acknowledged nothing for \(node.configuration.fenceAfterMillis) ms")
        }
    }

    /// Whether the transfer under way is to replace this node's state and has not yet; clears it.
    func takeReplacingState() -> Bool {
        state.withLock { s in
            guard case .requested(true) = s.transfer else { return false }
            s.transfer = .requested(replacingState: false)
            return true
        }
    }
}
