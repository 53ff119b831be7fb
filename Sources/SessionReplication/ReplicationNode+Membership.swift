#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SessionCore
import SystemSupport

// Membership and fencing (docs/replication.md, *Membership*), sync mode with a
// `majority` quorum: peers that stay silent or unacknowledging are declared
// dead and their incarnation fenced; a node that learns it was (or that a
// write of its own reached fewer than a majority) stops serving and rejoins.
extension ReplicationNode {
    // MARK: Fencing peers

    /// Declares `peer`'s incarnation dead: nothing more of it is applied here —
    /// its connections are closed, later ones refused with a `fenced` notice —
    /// and it is told so on this node's link to it, should that still reach it.
    ///
    /// Only a node that still hears a majority without that peer may: one that
    /// does not is on the minority side itself, and rejoins instead.
    func declareDead(_ peer: PeerIdentity, reason: String) {
        guard configuration.fences, !isRejoining else { return }
        let heard = core.peerHealth.heardRecently(
            excluding: peer.nodeID, now: monotonicNanos(),
            windowNanos: UInt64(configuration.fenceAfterMillis) * 500_000)
        let majority = Self.othersNeeded(links) + 1
        guard heard + 1 >= majority else {
            return rejoin(
                reason: "\(reason) of \(peer), and it hears from only \(heard + 1) of the nodes (itself included), fewer than a majority (\(majority))")
        }
        guard core.membership.fence(peer) else { return }
        core.counters.add(\.peersDeclaredDead)
        core.logger.warning("declared \(peer) dead: \(reason); its changes are refused until it rejoins")
        state.withLock { s in
            for (fd, run) in s.inbound where run == peer { shutdownSocket(fd) }
        }
        let notice = FencedNotice(incarnation: peer.incarnation, reason: reason)
        for link in links where link.peerIdentity == peer { link.sendFencedNotice(notice) }
    }

    /// A peer's new incarnation connected: its older ones are dead (it restarted or rejoined).
    func supersede(_ peer: PeerIdentity) {
        let older = state.withLock { s in
            Set(s.inbound.values.filter { $0.nodeID == peer.nodeID && $0.incarnation != peer.incarnation })
        }
        for run in older { declareDead(run, reason: "it came back as \(peer)") }
    }

    /// Answers a connection from a fenced incarnation with a `fenced` notice (its caller closes it).
    func refuseFenced(_ fd: Int32, sealer: FrameSealer, _ peer: PeerIdentity, name: String) {
        core.counters.add(\.fencedConnectionsRefused)
        core.logger.notice("refused the replication connection from \(name): \(peer) was declared dead")
        let notice = FencedNotice(incarnation: peer.incarnation, reason: "this incarnation was declared dead")
        _ = Sockets.writeAll(fd, sealer.seal(ReplicationFrame(type: .fenced, payload: notice.encode())))
    }

    /// A peer says this node's incarnation is dead: if it names the current one, rejoin.
    func receivedFencedNotice(_ notice: FencedNotice, from peer: String) {
        guard configuration.fences, notice.incarnation == core.membership.incarnation else { return }  // an earlier run's
        rejoin(reason: "\(peer) declared it dead (\(notice.reason))")
    }

    // MARK: Rejoining

    /// Stops serving (every request: 503 with `reason`), takes a new incarnation,
    /// and rejoins: reconnects to every peer, replaces this node's state by a
    /// ready peer's, then serves again. Meanwhile its links send nothing of its
    /// own state. A second call while rejoining does nothing.
    func rejoin(reason: String) {
        let first = state.withLock { s -> Bool in
            guard s.readyAfterMillis != nil, !s.stopped, !s.rejoining else { return false }
            s.rejoining = true
            return true
        }
        guard first else { return }
        core.counters.add(\.rejoins)
        core.membership.isRejoining = true
        store.stopServing(reason: "this node is rejoining the cluster: \(reason)")
        let incarnation = core.membership.renewIncarnation()
        core.logger.warning(
            "this node stops serving and rejoins as incarnation \(String(incarnation, radix: 16)): \(reason)")
        for link in links { link.reconnect() }
        let started = monotonicNanos()
        startThread { [self] in runRejoin(started: started, incarnation: incarnation) }
    }

    /// Whether a rejoin is under way.
    public var isRejoining: Bool { state.withLock { $0.rejoining } }

    /// Asks the peers reached under the new incarnation for their state until a
    /// ready one sends it. When every reachable peer — a majority with this
    /// node — is itself rejoining or starting (all sides of a partition gave
    /// up), it serves its own state after the join timeout instead.
    private func runRejoin(started: UInt64, incarnation: UInt64) {
        let joinNanos = UInt64(configuration.joinTimeoutMillis) * 1_000_000
        let answerNanos = UInt64(max(configuration.handshakeTimeoutMillis, 2 * configuration.fenceAfterMillis)) * 1_000_000
        while !isStopped {
            var notReady = 0
            for link in links where link.connectedAs == incarnation {
                guard let transfer = transfer(from: link, replacingState: true, limitNanos: answerNanos) else { continue }
                switch transfer {
                case .done(senderReady: true, let items):
                    let others = mergeOtherPeersStates(besides: link, incarnation: incarnation, answerNanos: answerNanos)
                    return finishRejoin(
                        started: started, replaced: true,
                        "received \(items) sessions and records from \(link.address)\(others.isEmpty ? "" : ", then the states of \(others)")")
                case .done(senderReady: false, _):
                    notReady += 1
                case .none, .requested:
                    if link.transferPending { link.reconnect() }  // no answer: try a new connection
                }
            }
            let needed = Self.othersNeeded(links)
            if notReady >= needed && monotonicNanos() - started >= joinNanos {
                return finishRejoin(
                    started: started, replaced: false,
                    "no ready peer: the \(notReady) reachable peers are rejoining or starting too; serving this node's own state")
            }
            usleep(20_000)
        }
    }

    /// Called by the link whose peer's state arrives for a rejoin, before merging it:
    /// drops this node's state and what its links had queued. (What other peers
    /// had sent comes back with their own state, which `runRejoin` asks for next.)
    func replaceState(from address: PeerAddress) {
        store.removeAll()
        for link in links { link.requestResync() }
        core.logger.notice("dropped this node's state; taking \(address)'s")
    }

    /// After the state was replaced by one peer's: merges every other reachable ready
    /// peer's too — changes they had sent this node before the replacement, and not
    /// yet to that peer, would otherwise be missing here. Returns the peers that answered.
    private func mergeOtherPeersStates(besides first: PeerLink, incarnation: UInt64, answerNanos: UInt64) -> [String] {
        var answered: [String] = []
        for link in links where link !== first && link.connectedAs == incarnation {
            if case .done(senderReady: true, _) = transfer(from: link, onlyIfReady: true, limitNanos: answerNanos) {
                answered.append(link.address.description)
            }
        }
        return answered
    }

    /// Serves again. With `replaced`, this node's state is its peers': the links skip the full
    /// resync each new connection would start with (the peers have all of it).
    private func finishRejoin(started: UInt64, replaced: Bool, _ detail: String) {
        guard !isStopped else { return }
        if replaced {
            for link in links where link.connectedAs == core.membership.incarnation { link.skipPendingResync() }
        }
        core.membership.isRejoining = false
        for link in links { link.wakeWriter() }
        state.withLock { $0.rejoining = false }
        store.isReady = true
        let millis = (monotonicNanos() - started) / 1_000_000
        core.logger.notice("rejoined the cluster after \(millis) ms: \(detail)", metadata: ["sessions": "\(store.count)"])
    }
}
