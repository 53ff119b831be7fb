import SessionCore

// What a replication node shows: its peers, its counters, its Prometheus metrics.
extension ReplicationNode {

    /// One peer as seen from this node.
    public struct PeerStatus: Sendable {
        public var address: String
        /// The peer's node name, once it said hello.
        public var name: String?
        public var connected: Bool
        /// Sync mode: missed an acknowledgement deadline and is not waited on until it catches up.
        public var lagging: Bool
        public var queuedBytes: Int
        public var unacknowledged: UInt64
        public var lastError: String?
    }

    /// Every configured peer but this node itself.
    public var peers: [PeerStatus] {
        links.map(\.status).filter { $0.phase != .isSelf }.map {
            PeerStatus(
                address: $0.address.description, name: $0.peerName, connected: $0.phase == .connected,
                lagging: $0.lagging, queuedBytes: $0.queuedBytes, unacknowledged: $0.unacknowledged,
                lastError: $0.lastError)
        }
    }

    package var counters: ReplicationCounters.Values {
        var values = core.counters.snapshot
        values.itemsSent = links.reduce(0) { $0 + $1.status.itemsSent }
        return values
    }

    /// Milliseconds from `start()` to ready (nil while not ready).
    public var readyAfterMillis: Int64? { state.withLock { $0.readyAfterMillis } }

    /// Prometheus text for `/metrics`.
    public func renderMetrics() -> String {
        let node = "node=\(prometheusLabelValue(configuration.nodeName))"
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { out += "\(name){\(node)\(labels)} \(value)\n" }
        }
        metric("session_replication_ready", "gauge", "1 once the state transfer is done.", [("", isReady ? "1" : "0")])
        metric(
            "session_replication_rejoining", "gauge", "1 while this node rejoins the cluster (not serving).",
            [("", isRejoining ? "1" : "0")])
        metric("session_replication_sessions", "gauge", "Sessions and tombstones held.", [("", "\(store.count)")])
        let peers = peers
        metric(
            "session_replication_peer_connected", "gauge", "1 while the connection to the peer is up.",
            peers.map { (",peer=\(prometheusLabelValue($0.address))", $0.connected ? "1" : "0") })
        metric(
            "session_replication_peer_lagging", "gauge", "1 while sync writes do not wait for the peer.",
            peers.map { (",peer=\(prometheusLabelValue($0.address))", $0.lagging ? "1" : "0") })
        metric(
            "session_replication_peer_queue_bytes", "gauge", "Bytes queued for the peer.",
            peers.map { (",peer=\(prometheusLabelValue($0.address))", "\($0.queuedBytes)") })
        let c = counters
        let totals: [(String, String, Int)] = [
            ("items_sent", "Changes sent to peers.", c.itemsSent),
            ("items_received", "Changes merged from peers.", c.itemsReceived),
            ("items_refused", "Changes refused (stamp too far in the future).", c.itemsRefused),
            ("queue_overflows", "Full send queues dropped (a resync followed).", c.queueOverflows),
            ("resyncs", "Full resyncs sent.", c.resyncs),
            ("frames_rejected", "Connections closed for bad frames.", c.framesRejected),
            ("protocol_violations", "Connections closed for protocol violations.", c.protocolViolations),
            ("sync_timeouts", "Sync writes a peer did not acknowledge in time.", c.syncTimeouts),
            ("relays", "Disconnected peers whose recent changes were passed on to the others.", c.relays),
            ("connections_refused", "Authenticated inbound connections refused: maxInboundConnections were open.", c.connectionsRefused),
            ("handshakes_timed_out", "Inbound connections closed for not finishing the handshake in time.", c.handshakesTimedOut),
            ("handshakes_evicted", "Unauthenticated inbound connections closed to make room for newer ones.", c.handshakesEvicted),
            ("unknown_peers_refused", "Authenticated connections from addresses that are not configured peers.", c.unknownPeersRefused),
            ("items_relayed", "Changes of disconnected peers passed on to the others.", c.itemsRelayed),
            ("pauses_detected", "Times this node noticed it had been frozen (SIGSTOP, a stalled VM).", c.pausesDetected),
            ("key_lookups_after_pause", "Requests that asked every peer for their key because this node had just been frozen.", c.keyLookupsAfterPause),
            ("peers_declared_dead", "Peer incarnations this node declared dead and fenced (sync mode, majority quorum).", c.peersDeclaredDead),
            ("fenced_connections_refused", "Connections refused or closed because their peer's incarnation was fenced.", c.fencedConnectionsRefused),
            ("writes_without_majority", "Writes refused because fewer than a majority of the nodes acknowledged them.", c.writesWithoutMajority),
            ("rejoins", "Times this node stopped serving and rejoined (fenced, or a write without a majority).", c.rejoins),
        ]
        let overwritten = (
            "concurrent_sets_overwritten",
            "Sets a merge resolved against a concurrent one written on a node that had not seen it (last writer wins; the other is gone).",
            store.concurrentSetsOverwritten
        )
        for (name, help, value) in totals + [overwritten] {
            metric("session_replication_\(name)_total", "counter", help, [("", "\(value)")])
        }
        let catchUp = store.catchUpCounts
        metric(
            "session_replication_catch_up_total", "counter",
            "Requests with a read token: refused (MAC did not verify), copy current, waited, fetched from peers, gave up.",
            [
                (",outcome=\"refused\"", "\(catchUp.refused)"),
                (",outcome=\"current\"", "\(catchUp.current)"), (",outcome=\"waited\"", "\(catchUp.waited)"),
                (",outcome=\"fetched\"", "\(catchUp.fetched)"), (",outcome=\"gave_up\"", "\(catchUp.gaveUp)"),
            ])
        let lookups = store.keyLookupCounts
        metric(
            "session_replication_key_lookup_total", "counter",
            "Idempotency-Key lookups before a keyed request ran: skipped (no peer in doubt), unknown everywhere, replayed from a peer's record, deferred to a peer's earlier claim, timed out; rechecked_after_pause: asked again before the write, this node having been frozen since the claim.",
            [
                (",outcome=\"skipped\"", "\(lookups.skipped)"),
                (",outcome=\"unknown\"", "\(lookups.unknown)"), (",outcome=\"replayed\"", "\(lookups.replayed)"),
                (",outcome=\"deferred\"", "\(lookups.deferred)"), (",outcome=\"timed_out\"", "\(lookups.timedOut)"),
                (",outcome=\"rechecked_after_pause\"", "\(lookups.recheckedAfterPause)"),
            ])
        return out
    }
}

/// A Prometheus label value, quoted: backslash, double quote and newline escaped (the text format's rules).
private func prometheusLabelValue(_ value: String) -> String {
    var out = "\""
    for c in value {
        switch c {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        default: out.append(c)
        }
    }
    return out + "\""
}
