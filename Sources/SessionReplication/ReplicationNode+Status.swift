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

    /// The `session_replication_*` series in Prometheus text: this node's own registry, after
    /// `updateMetrics()`. Empty when the node was given a `MetricsFactory`: its series went
    /// there (`DemoNode` renders them with its own).
    public func renderMetrics() -> String {
        updateMetrics()
        return metrics.render()
    }

    /// Passes the node's state and counts on to its metrics factory: readiness, sessions held,
    /// each peer's connection, lag and queue (gauges), and every running total (counters).
    /// `renderMetrics()` calls it; with a factory of one's own it runs every few seconds too.
    public func updateMetrics() {
        var values = ReplicationMetrics.Values()
        values.levels = [
            ("session_replication_ready", [], isReady ? 1 : 0),
            ("session_replication_rejoining", [], isRejoining ? 1 : 0),
            ("session_replication_sessions", [], store.count),
        ]
        for peer in peers {
            let labels = [("peer", peer.address)]
            values.levels.append(("session_replication_peer_connected", labels, peer.connected ? 1 : 0))
            values.levels.append(("session_replication_peer_lagging", labels, peer.lagging ? 1 : 0))
            values.levels.append(("session_replication_peer_queue_bytes", labels, peer.queuedBytes))
        }
        let c = counters
        let totals: [(String, Int)] = [
            ("items_sent", c.itemsSent), ("items_received", c.itemsReceived), ("items_refused", c.itemsRefused),
            ("queue_overflows", c.queueOverflows), ("resyncs", c.resyncs), ("frames_rejected", c.framesRejected),
            ("protocol_violations", c.protocolViolations), ("sync_timeouts", c.syncTimeouts), ("relays", c.relays),
            ("connections_refused", c.connectionsRefused), ("handshakes_timed_out", c.handshakesTimedOut),
            ("handshakes_evicted", c.handshakesEvicted), ("unknown_peers_refused", c.unknownPeersRefused),
            ("items_relayed", c.itemsRelayed), ("pauses_detected", c.pausesDetected),
            ("key_lookups_after_pause", c.keyLookupsAfterPause), ("peers_declared_dead", c.peersDeclaredDead),
            ("fenced_connections_refused", c.fencedConnectionsRefused),
            ("writes_without_majority", c.writesWithoutMajority), ("rejoins", c.rejoins),
            ("concurrent_sets_overwritten", store.concurrentSetsOverwritten),
        ]
        values.totals = totals.map { ("session_replication_\($0.0)_total", [], $0.1) }
        let catchUp = store.catchUpCounts
        for (outcome, value) in [
            ("refused", catchUp.refused), ("current", catchUp.current), ("waited", catchUp.waited),
            ("fetched", catchUp.fetched), ("gave_up", catchUp.gaveUp),
        ] {
            values.totals.append(("session_replication_catch_up_total", [("outcome", outcome)], value))
        }
        let lookups = store.keyLookupCounts
        for (outcome, value) in [
            ("skipped", lookups.skipped), ("unknown", lookups.unknown), ("replayed", lookups.replayed),
            ("deferred", lookups.deferred), ("timed_out", lookups.timedOut),
            ("rechecked_after_pause", lookups.recheckedAfterPause),
        ] {
            values.totals.append(("session_replication_key_lookup_total", [("outcome", outcome)], value))
        }
        metrics.update(values)
    }
}
