#if canImport(Glibc)
import Glibc
#endif
import SessionCore
import SystemSupport

/// A peer's replication address, "host:port" or "[v6]:port".
public struct PeerAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "host:port" or "[v6]:port"; nil when malformed.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(" ") else { return nil }
        self.host = host
        self.port = port
    }

    /// Parses a comma-separated list; throws naming the first bad entry.
    public static func list(_ text: String) throws(ReplicationConfigurationError) -> [PeerAddress] {
        try text.split(separator: ",").map { part throws(ReplicationConfigurationError) -> PeerAddress in
            let trimmed = part.trimmingCharacters(in: " ")
            guard let address = PeerAddress(trimmed) else {
                throw ReplicationConfigurationError("peer '\(trimmed)' is not host:port")
            }
            return address
        }
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        String(drop(while: { $0 == set }).reversed().drop(while: { $0 == set }).reversed())
    }
}

/// A replication setting was unusable.
public struct ReplicationConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "replication configuration error: \(message)" }
}

/// Settings of a `ReplicationNode`. Times are in milliseconds.
public struct ReplicationConfiguration: Sendable {
    /// When a local write is answered.
    public enum Mode: String, Sendable, CaseIterable {
        /// At once; peers get the change in the background.
        case async
        /// After every live peer acknowledged it (or `syncTimeoutMillis` passed: that peer is then skipped until it catches up).
        case sync
    }

    /// When a request with an `Idempotency-Key` this node has not seen first
    /// asks the peers about it (one round trip to every live peer).
    public enum KeyLookups: String, Sendable, CaseIterable {
        /// Every time: a key runs once across the cluster, also when a client
        /// retries while the first attempt still runs on another node.
        case always
        /// Only while a peer may just have died (a connection down, lost in
        /// the last `relayWindowMillis`, lagging or silent): covers a node
        /// that dies with a change half replicated, at no cost otherwise; two
        /// live nodes may each run a concurrent duplicate once.
        case whenPeerInDoubt = "when-peer-in-doubt"
        /// Never: claims are per node.
        case never
    }

    /// Whether a sync-mode write needs a majority of the cluster (docs/replication.md, *Membership*).
    public enum Quorum: String, Sendable, CaseIterable {
        /// A write that fewer than a majority of the nodes (this one included)
        /// acknowledged within `syncTimeoutMillis` is answered 503: the node
        /// stops serving and rejoins (CP). Peers silent or lagging for
        /// `fenceAfterMillis` are declared dead: their changes are refused
        /// until they rejoin under a new incarnation.
        case majority
        /// Every write goes on with the peers that answered, none at all
        /// included (each side of a partition serves and diverges; AP).
        case none
    }

    /// This node's name (logs, metrics, hello).
    public var nodeName: String
    /// This node's id in every HLC stamp: unique in the cluster. Default: a hash of `nodeName`.
    public var nodeID: UInt32
    /// Where to listen for peers.
    public var host: String
    /// The replication port; 0 picks a free one.
    public var port: Int
    /// Every node's replication address. It may include this node's own
    /// address (recognized and skipped), so every node can get the same list.
    public var peers: [PeerAddress]
    /// Only these may connect: the addresses peers announce in their hello
    /// (their own `host:port`). nil: `peers`. Set it for one-way links (a node
    /// that accepts peers it does not replicate to).
    public var acceptedPeers: [PeerAddress]?
    /// The cluster secret, the same on every node, at least 16 bytes: peers
    /// prove they hold it in the handshake, and every connection derives its
    /// encryption keys from it (docs/replication.md).
    public var secret: [UInt8]
    public var mode: Mode
    /// How long a sync-mode write waits for a peer's acknowledgement before marking it down.
    public var syncTimeoutMillis: Int
    /// The most bytes queued for one peer. When full, the queue is dropped
    /// (counted) and the peer is sent a full resync instead.
    public var maxQueueBytes: Int
    /// How long a starting node looks for a ready peer to pull the sessions
    /// from before it starts alone (the first node of a cluster).
    public var joinTimeoutMillis: Int
    /// Connect and hello timeout.
    public var connectTimeoutMillis: Int
    /// Reconnect backoff: from the first value, doubling, up to the second.
    public var reconnectBackoffMillis: (first: Int, max: Int)
    /// Idle connections send a ping this often; a peer silent for `peerIdleTimeoutMillis` is dropped
    /// (for `fenceAfterMillis` with a `majority` quorum: declared dead).
    public var pingIntervalMillis: Int
    public var peerIdleTimeoutMillis: Int
    /// A state-transfer chunk holds about this many bytes.
    public var snapshotChunkBytes: Int
    /// The most authenticated inbound peer connections at once (more are closed at once).
    public var maxInboundConnections: Int
    /// How long a connection may take for its whole handshake (hello and key
    /// confirmation), however slowly its bytes arrive.
    public var handshakeTimeoutMillis: Int
    /// The most inbound connections still in their handshake; past it, the
    /// oldest is closed to make room, so unauthenticated connections never
    /// keep a peer out.
    public var maxPendingHandshakes: Int
    /// How long each peer's changes are kept to be passed on to the other
    /// peers should that peer disconnect (a change of a dying node may have
    /// reached only some); also how long after a peer loss sync-mode requests
    /// look up their `Idempotency-Key` on the peers. 0 turns both off.
    public var relayWindowMillis: Int
    /// Default: `always` in sync mode, `never` in async mode.
    public var keyLookups: KeyLookups
    /// Default: `majority` in sync mode, `none` in async mode (which never waits for peers).
    public var quorum: Quorum
    /// With `quorum` `majority`: a peer that sent nothing (its pings included)
    /// for this long, or has not acknowledged a change for this long, is
    /// declared dead, and its incarnation fenced.
    public var fenceAfterMillis: Int

    public init(
        nodeName: String, nodeID: UInt32? = nil, host: String = "127.0.0.1", port: Int = 0, peers: [PeerAddress] = [],
        secret: [UInt8], mode: Mode = .async, syncTimeoutMillis: Int = 100, maxQueueBytes: Int = 64 << 20,
        joinTimeoutMillis: Int = 1_000, connectTimeoutMillis: Int = 1_000,
        reconnectBackoffMillis: (first: Int, max: Int) = (20, 1_000), pingIntervalMillis: Int = 250,
        peerIdleTimeoutMillis: Int = 10_000, snapshotChunkBytes: Int = 256 << 10, maxInboundConnections: Int = 64,
        relayWindowMillis: Int = 5_000, keyLookups: KeyLookups? = nil, acceptedPeers: [PeerAddress]? = nil,
        handshakeTimeoutMillis: Int = 2_000, maxPendingHandshakes: Int = 16, quorum: Quorum? = nil,
        fenceAfterMillis: Int = 1_000
    ) {
        self.nodeName = nodeName
        self.nodeID = nodeID ?? Self.nodeID(for: nodeName)
        self.host = host
        self.port = port
        self.peers = peers
        self.secret = secret
        self.mode = mode
        self.syncTimeoutMillis = syncTimeoutMillis
        self.maxQueueBytes = maxQueueBytes
        self.joinTimeoutMillis = joinTimeoutMillis
        self.connectTimeoutMillis = connectTimeoutMillis
        self.reconnectBackoffMillis = reconnectBackoffMillis
        self.pingIntervalMillis = pingIntervalMillis
        self.peerIdleTimeoutMillis = peerIdleTimeoutMillis
        self.snapshotChunkBytes = snapshotChunkBytes
        self.maxInboundConnections = maxInboundConnections
        self.relayWindowMillis = relayWindowMillis
        self.keyLookups = keyLookups ?? (mode == .sync ? .always : .never)
        self.acceptedPeers = acceptedPeers
        self.handshakeTimeoutMillis = handshakeTimeoutMillis
        self.maxPendingHandshakes = maxPendingHandshakes
        self.quorum = quorum ?? (mode == .sync ? .majority : .none)
        self.fenceAfterMillis = fenceAfterMillis
    }

    /// Whether this node fences peers and needs a majority for its writes.
    var fences: Bool { mode == .sync && quorum == .majority }

    /// Throws naming the first setting out of range (a negative or huge time
    /// would otherwise trap when turned into nanoseconds). `ReplicationNode` checks it.
    public func validate() throws(ReplicationConfigurationError) {
        let hour = 3_600_000
        let times: [(String, Int, ClosedRange<Int>)] = [
            ("syncTimeoutMillis", syncTimeoutMillis, 1...hour),
            ("joinTimeoutMillis", joinTimeoutMillis, 0...hour),
            ("connectTimeoutMillis", connectTimeoutMillis, 1...hour),
            ("reconnectBackoffMillis.first", reconnectBackoffMillis.first, 1...hour),
            ("reconnectBackoffMillis.max", reconnectBackoffMillis.max, reconnectBackoffMillis.first...hour),
            ("pingIntervalMillis", pingIntervalMillis, 1...hour),
            ("peerIdleTimeoutMillis", peerIdleTimeoutMillis, 1...hour),
            ("relayWindowMillis", relayWindowMillis, 0...hour),
            ("handshakeTimeoutMillis", handshakeTimeoutMillis, 1...hour),
            ("fenceAfterMillis", fenceAfterMillis, 1...hour),
        ]
        for (name, value, range) in times where !range.contains(value) {
            throw ReplicationConfigurationError("\(name) must be \(range.lowerBound)...\(range.upperBound) ms, not \(value)")
        }
        if fences && fenceAfterMillis < 2 * pingIntervalMillis {
            throw ReplicationConfigurationError(
                "fenceAfterMillis (\(fenceAfterMillis)) must be at least twice pingIntervalMillis (\(pingIntervalMillis)): an idle peer would be declared dead")
        }
        let sizes: [(String, Int, ClosedRange<Int>)] = [
            ("maxQueueBytes", maxQueueBytes, 1...(1 << 40)),
            ("snapshotChunkBytes", snapshotChunkBytes, 1...(FrameFormat.defaultMaxPayloadBytes / 2)),
            ("maxInboundConnections", maxInboundConnections, 1...65_536),
            ("maxPendingHandshakes", maxPendingHandshakes, 1...65_536),
        ]
        for (name, value, range) in sizes where !range.contains(value) {
            throw ReplicationConfigurationError("\(name) must be \(range.lowerBound)...\(range.upperBound), not \(value)")
        }
    }

    /// FNV-1a of the name, never 0 (stamp node 0 is `HLCStamp.zero`'s).
    public static func nodeID(for name: String) -> UInt32 {
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return hash == 0 ? 1 : hash
    }
}

extension ReplicationConfiguration {
    /// The settings a node's command line gives, validated, with errors that name the
    /// option: `--peers` (host:port,...), `--replication-port`, `--replication-mode`
    /// (sync or async), `--sync-timeout-ms`, and the cluster secret (`--cluster-secret`,
    /// else `$SESSION_CLUSTER_SECRET`, else the first line of the file `$SESSION_CLUSTER_SECRET_FILE`
    /// names; 16+ bytes, the same on every node).
    public static func fromCommandLine(
        nodeName: String, host: String, port: Int, peers: String?, mode: String, syncTimeoutMillis: Int,
        secret: String?, keyLookups: String? = nil, acceptPeers: String? = nil, quorum: String? = nil
    ) throws(ReplicationConfigurationError) -> ReplicationConfiguration {
        guard let mode = Mode(rawValue: mode) else { throw ReplicationConfigurationError("--replication-mode must be sync or async") }
        let quorum = try quorum.map { text throws(ReplicationConfigurationError) -> Quorum in
            guard let quorum = Quorum(rawValue: text) else { throw ReplicationConfigurationError("--quorum must be majority or none") }
            return quorum
        }
        let lookups = try keyLookups.map { text throws(ReplicationConfigurationError) -> KeyLookups in
            guard let lookups = KeyLookups(rawValue: text) else {
                throw ReplicationConfigurationError("--key-lookups must be always, when-peer-in-doubt or never")
            }
            return lookups
        }
        let fromEnvironment: [UInt8]?
        do {
            fromEnvironment = try SecretFromEnvironment.secrets("SESSION_CLUSTER_SECRET")?.first
        } catch {
            throw ReplicationConfigurationError(error.message)
        }
        guard let secret = secret.map({ Array($0.utf8) }) ?? fromEnvironment else {
            throw ReplicationConfigurationError(
                "replication needs a cluster secret: SESSION_CLUSTER_SECRET, SESSION_CLUSTER_SECRET_FILE or --cluster-secret (16+ bytes, the same on every node)")
        }
        guard secret.count >= ClusterSecret.minimumByteCount else {
            throw ReplicationConfigurationError("the cluster secret must be at least \(ClusterSecret.minimumByteCount) bytes")
        }
        guard (1...60_000).contains(syncTimeoutMillis) else { throw ReplicationConfigurationError("--sync-timeout-ms must be 1...60000") }
        guard (0...65535).contains(port) else { throw ReplicationConfigurationError("--replication-port must be 0...65535") }
        let peerList: [PeerAddress]
        do {
            peerList = try PeerAddress.list(peers ?? "")
        } catch {
            throw ReplicationConfigurationError("--peers: \(error.message)")
        }
        var accepted: [PeerAddress]?
        do {
            if let acceptPeers { accepted = try PeerAddress.list(acceptPeers) }
        } catch {
            throw ReplicationConfigurationError("--accept-peers: \(error.message)")
        }
        return ReplicationConfiguration(
            nodeName: nodeName, host: host, port: port, peers: peerList, secret: secret, mode: mode,
            syncTimeoutMillis: syncTimeoutMillis, keyLookups: lookups, acceptedPeers: accepted, quorum: quorum)
    }
}
