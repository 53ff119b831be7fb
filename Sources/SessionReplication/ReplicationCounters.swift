import Synchronization

/// Monotonic counters of a replication node, for `/metrics`.
package final class ReplicationCounters: Sendable {
    public struct Values: Sendable, Equatable {
        /// Changes sent to peers (a change sent to two peers counts twice), resyncs included.
        public var itemsSent = 0
        /// Changes received from peers and merged.
        public var itemsReceived = 0
        /// Received changes refused (a stamp too far in the future: a peer's broken clock).
        public var itemsRefused = 0
        /// Times a peer's send queue was full and dropped (a resync followed).
        public var queueOverflows = 0
        /// Full resyncs sent (at every connection, and after an overflow).
        public var resyncs = 0
        /// Connections closed for bad frames: garbage, truncated, oversized, or a wrong HMAC.
        public var framesRejected = 0
        /// Connections closed for valid frames that break the protocol.
        public var protocolViolations = 0
        /// Sync writes a peer did not acknowledge in time (the peer was marked lagging).
        public var syncTimeouts = 0
        /// Fetches (read-your-writes) and state transfers answered for peers.
        public var fetchesServed = 0
        public var snapshotsServed = 0
        /// Idempotency key lookups answered for peers.
        public var keyLookupsServed = 0
        /// Times this node noticed it had itself been frozen (SIGSTOP, a stalled VM; `PauseDetector`).
        public var pausesDetected = 0
        /// Requests that looked their key up on every peer because this node had just been frozen.
        public var keyLookupsAfterPause = 0
        /// Peers that disconnected whose recent changes this node passed on to
        /// the others, and how many sessions and records (counted per peer sent to).
        public var relays = 0
        public var itemsRelayed = 0
        /// Inbound connections refused because `maxInboundConnections` were open.
        public var connectionsRefused = 0
        /// Inbound connections closed before they were authenticated: their
        /// handshake took longer than `handshakeTimeoutMillis`, or they were
        /// the oldest of `maxPendingHandshakes` when another one arrived.
        public var handshakesTimedOut = 0
        public var handshakesEvicted = 0
        /// Authenticated connections from an address not in `acceptedPeers` (or `peers`).
        public var unknownPeersRefused = 0
        /// Membership (sync mode, `majority` quorum; docs/replication.md, *Membership*): peer
        /// incarnations declared dead; connections refused or closed because their incarnation
        /// was; writes refused because fewer than a majority acknowledged them; rejoins.
        public var peersDeclaredDead = 0
        public var fencedConnectionsRefused = 0
        public var writesWithoutMajority = 0
        public var rejoins = 0
    }

    private let values = Mutex(Values())

    func add(_ key: WritableKeyPath<Values, Int>, _ amount: Int = 1) {
        values.withLock { $0[keyPath: key] += amount }
    }

    public var snapshot: Values { values.withLock { $0 } }
}
