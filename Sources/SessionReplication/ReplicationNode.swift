#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import MiniHTTP
import SessionCore
import Synchronization

/// Monotonic counters of a replication node, for `/metrics`.
public final class ReplicationCounters: Sendable {
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

/// What the peer links share with the node: settings, keys, the store.
final class ReplicationNodeCore: Sendable {
    let configuration: ReplicationConfiguration
    let secret: ClusterSecret
    /// This node's incarnation and the peers it fenced.
    let membership: Membership
    let logger: Logger
    let store: ReplicatedSessionStore
    let counters = ReplicationCounters()
    let peerHealth = PeerHealth()

    init(
        configuration: ReplicationConfiguration, secret: ClusterSecret, hello: HelloMessage, logger: Logger,
        store: ReplicatedSessionStore
    ) {
        self.configuration = configuration
        self.secret = secret
        self.membership = Membership(hello: hello)
        self.logger = logger
        self.store = store
    }

    /// This node's hello (its current incarnation); each connection sends it with a fresh nonce.
    var hello: HelloMessage { membership.hello }

    private struct Owner: Sendable {
        weak var node: ReplicationNode?
    }

    private let ownerBox = Mutex(Owner())

    /// The node these links and connections belong to (membership events go to it).
    var owner: ReplicationNode? {
        get { ownerBox.withLock { $0.node } }
        set { ownerBox.withLock { $0.node = newValue } }
    }

    /// Merges items from a peer into the store.
    func merge(_ items: [ReplicationItem]) {
        var refused = 0
        for item in items {
            switch item {
            case .session(let update): if !store.merge(update) { refused += 1 }
            case .record(let record): store.merge(record: record)
            }
        }
        counters.add(\.itemsReceived, items.count - refused)
        if refused > 0 {
            counters.add(\.itemsRefused, refused)
            logger.warning("refused \(refused) changes stamped too far in the future (a peer's clock is wrong)")
        }
    }

    /// A sync write that fewer than a majority acknowledged: counted, and the node
    /// stops serving and rejoins (`ReplicationNode.rejoin`). Returns false.
    func refuseWithoutMajority(acknowledged: Int, needed: Int) -> Bool {
        counters.add(\.writesWithoutMajority)
        owner?.rejoin(
            reason: "a write reached \(acknowledged + 1) nodes, fewer than a majority (\(needed + 1)): this node may be cut off from its peers")
        return false
    }

    /// This node's whole state, encoded: every session, tombstone and record.
    func allItems() -> [[UInt8]] {
        store.snapshot(chunkSize: .max).joined().map { ReplicationItem.session($0).encoded }
            + store.recordSnapshot().map { ReplicationItem.record($0).encoded }
    }
}

/// The network half of the replicate-on-change strategy (docs/replication.md):
/// listens for peers, keeps a connection to each, replicates every change of
/// its `ReplicatedSessionStore`, merges the peers' changes, pulls the full
/// state from a peer when it starts, and fetches sessions for read-your-writes.
///
/// The store refuses requests (`unavailable`) until the state transfer is
/// done: `isReady`, and the demo node's `/healthz`, turn true only then.
public final class ReplicationNode: Sendable {
    public let store: ReplicatedSessionStore
    public let configuration: ReplicationConfiguration
    let core: ReplicationNodeCore
    let links: [PeerLink]
    /// Notices when this node itself was frozen (SIGSTOP, a stalled VM).
    let pauseDetector: PauseDetector

    struct State {
        var listener: Int32
        /// Authenticated inbound connections, and the peer run on each.
        var inbound: [Int32: PeerIdentity] = [:]
        /// Inbound connections in their handshake, oldest first.
        var pending: [Int32] = []
        var started = false
        var stopped = false
        /// How the node became ready, for logs and metrics.
        var readyAfterMillis: Int64?
        var transferredItems: UInt64 = 0
        /// A rejoin is under way (`rejoin(reason:)`).
        var rejoining = false
    }

    let state: Mutex<State>
    /// The bound replication port.
    public let port: Int

    /// Binds the replication port (throws when taken) and takes over `store`'s
    /// replication hooks. Nothing is sent or accepted before `start()`.
    public init(store: ReplicatedSessionStore, configuration: ReplicationConfiguration, logger: Logger) throws {
        try configuration.validate()
        guard store.hlc.node == configuration.nodeID else {
            throw ReplicationConfigurationError(
                "the store's node id \(store.hlc.node) differs from the configuration's \(configuration.nodeID)")
        }
        guard store.maxSessionBytes <= ReplicatedSessionStore.maxSessionBytesLimit else {
            throw ReplicationConfigurationError(
                "the store's maxSessionBytes is \(store.maxSessionBytes); a replicated session may hold at most \(ReplicatedSessionStore.maxSessionBytesLimit) (one replication frame)")
        }
        let secret = try ClusterSecret(configuration.secret)
        let listener = try Sockets.listen(host: configuration.host, port: configuration.port)
        port = Sockets.localPort(listener)
        let address = PeerAddress(host: configuration.host, port: port)
        let hello = try HelloMessage(
            nodeID: configuration.nodeID, nodeName: configuration.nodeName, address: address.description,
            incarnation: UInt64.random(in: 1...UInt64.max))
        self.store = store
        self.configuration = configuration
        let core = ReplicationNodeCore(
            configuration: configuration, secret: secret, hello: hello, logger: logger, store: store)
        self.core = core
        // Our own address in the list needs no connection; other spellings of it are found by the hello.
        links = Array(Set(configuration.peers)).filter { $0 != address }.sorted { $0.description < $1.description }
            .map { PeerLink(address: $0, node: core) }
        state = Mutex(State(listener: listener))
        pauseDetector = PauseDetector(
            windowNanos: UInt64(configuration.relayWindowMillis) * 1_000_000,
            onPause: { nanos in
                core.counters.add(\.pausesDetected)
                core.logger.warning(
                    "this node was frozen for \(nanos / 1_000_000) ms (SIGSTOP, a stalled VM): for \(configuration.relayWindowMillis) ms every idempotency key is looked up on every connected peer")
                // Frozen longer than peers wait before declaring a node dead: they have fenced this run.
                if configuration.fences && nanos >= UInt64(configuration.fenceAfterMillis) * 1_000_000 {
                    core.owner?.rejoin(reason: "this node was frozen for \(nanos / 1_000_000) ms; its peers have declared it dead")
                }
            })
        store.isReady = false
        store.readTokenKey = HMACKey(secret.readTokenKey)
        store.refusesStaleReads = configuration.fences
        let links = links
        let mode = configuration.mode
        let timeout = UInt64(configuration.syncTimeoutMillis) * 1_000_000
        // Sync mode with a majority quorum: a write confirmed by fewer than a majority fails, and the node rejoins.
        let fences = configuration.fences
        let quorumTimeout = max(timeout, UInt64(configuration.fenceAfterMillis) * 1_000_000)
        store.onUpdate = { updates in
            // Idle-timer refreshes never make a request wait.
            let touchOnly = updates.allSatisfy {
                $0.state.attributes.isEmpty && !$0.state.isInvalidated && $0.idempotencyRecord == nil
            }
            let wait = mode == .sync && !touchOnly
            let needed = wait && fences ? Self.othersNeeded(links) : 0
            let acknowledged = Self.replicate(
                updates.map { .session($0) }, to: links, wait: wait, timeout: timeout, quorumTimeout: quorumTimeout,
                othersNeeded: needed)
            return acknowledged >= needed || core.refuseWithoutMajority(acknowledged: acknowledged, needed: needed)
        }
        store.onRecord = { record in
            let needed = mode == .sync && fences ? Self.othersNeeded(links) : 0
            let acknowledged = Self.replicate(
                [.record(record)], to: links, wait: mode == .sync, timeout: timeout, quorumTimeout: quorumTimeout,
                othersNeeded: needed)
            return acknowledged >= needed || core.refuseWithoutMajority(acknowledged: acknowledged, needed: needed)
        }
        store.onFetch = { id, request in links.reduce(0) { $0 + ($1.fetch(id, request: request) ? 1 : 0) } }
        let lookups = configuration.keyLookups
        let pause = pauseDetector
        // Exactly once across the cluster: a request looks for its key on the peers first
        // (a dying node's change may have reached only some; a first attempt may still run).
        // After this node was itself frozen, every connected peer is asked, lagging or not,
        // whatever `keyLookups` says: its clients' retries ran on them meanwhile (PauseDetector).
        store.lastPauseEnded = { pause.lastResume(now: monotonicNanos()) }
        store.onLookup = { key, request in
            if pause.pausedRecently(now: monotonicNanos()) {
                core.counters.add(\.keyLookupsAfterPause)
                return links.reduce(0) { $0 + ($1.lookUp(key: key, request: request, evenIfLagging: true) ? 1 : 0) }
            }
            switch lookups {
            case .never: return 0
            case .whenPeerInDoubt: guard Self.mayHaveLostAPeer(links: links, core: core) else { return 0 }
            case .always: break
            }
            return links.reduce(0) { $0 + ($1.lookUp(key: key, request: request) ? 1 : 0) }
        }
        core.owner = self
    }

    /// Whether a peer may have died with a change that reached only some
    /// nodes, not yet relayed: a link down, lagging, lost within the relay
    /// window or already showing the peer's close; an inbound connection lost
    /// within the window; or a peer silent for three ping intervals.
    static func mayHaveLostAPeer(links: [PeerLink], core: ReplicationNodeCore) -> Bool {
        let now = monotonicNanos()
        let window = UInt64(core.configuration.relayWindowMillis) * 1_000_000
        if links.contains(where: { $0.isInDoubt(now: now, windowNanos: window) }) { return true }
        let silence = UInt64(core.configuration.pingIntervalMillis) * 3_000_000
        return core.peerHealth.inDoubt(now: now, windowNanos: window, silenceNanos: silence)
    }

    /// The fewest nodes of `size` that make a majority.
    static func majority(of size: Int) -> Int { size / 2 + 1 }

    /// How many peers must acknowledge a write for a majority with this node:
    /// the cluster is this node and every peer address that is not its own.
    static func othersNeeded(_ links: [PeerLink]) -> Int {
        majority(of: 1 + links.reduce(0) { $0 + ($1.phase == .isSelf ? 0 : 1) }) - 1
    }

    /// Sends items to every connected peer; in sync mode waits for their
    /// acknowledgements, and returns how many acknowledged. When fewer than
    /// `othersNeeded` did within `timeout`, the others — lagging ones too —
    /// are waited for until `quorumTimeout`: a write is refused for want of a
    /// majority only after as long as peers wait before declaring a node dead,
    /// never for one slow acknowledgement.
    private static func replicate(
        _ items: [ReplicationItem], to links: [PeerLink], wait: Bool, timeout: UInt64, quorumTimeout: UInt64,
        othersNeeded: Int
    ) -> Int {
        let bytes = items.count == 1 ? items[0].encoded : items.flatMap(\.encoded)
        var sequences: [(PeerLink, UInt64)] = []
        for link in links {
            if let sequence = link.enqueue(bytes, itemCount: items.count) { sequences.append((link, sequence)) }
        }
        guard wait, !sequences.isEmpty else { return 0 }
        let started = monotonicNanos()
        var acknowledged = 0
        var unacknowledged: [(PeerLink, UInt64)] = []
        for (link, sequence) in sequences {
            if link.waitForAck(sequence, until: started + timeout) == .acknowledged {
                acknowledged += 1
            } else {
                unacknowledged.append((link, sequence))
            }
        }
        for (link, sequence) in unacknowledged where acknowledged < othersNeeded {
            if link.waitForAck(sequence, until: started + quorumTimeout, evenIfLagging: true) == .acknowledged {
                acknowledged += 1
            }
        }
        return acknowledged
    }

    /// Starts accepting peers, connecting to them, and the state transfer.
    public func start() {
        let listener = state.withLock { s -> Int32? in
            guard !s.started, !s.stopped else { return nil }
            s.started = true
            return s.listener
        }
        guard let listener else { return }
        core.logger.info(
            "replication listening on \(configuration.host):\(port)",
            metadata: [
                "node": "\(configuration.nodeName)", "node_id": "\(configuration.nodeID)",
                "mode": "\(configuration.mode.rawValue)", "peers": "\(links.map(\.address.description))",
            ])
        pauseDetector.start()
        startThread { [self] in acceptLoop(listener) }
        for link in links { link.start() }
        startThread { [self] in join() }
    }

    /// Whether the state transfer is done (or the node started alone).
    public var isReady: Bool { store.isReady }

    /// Waits until ready; false on timeout.
    public func waitUntilReady(timeoutMillis: Int) -> Bool {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while !isReady {
            if monotonicMillis() >= deadline { return false }
            usleep(1_000)
        }
        return true
    }

    /// Stops replicating: closes every connection and the listener. The store keeps its sessions.
    /// A second call does nothing.
    public func shutdown() {
        let first = state.withLock { s -> Bool in
            defer { s.stopped = true }
            return !s.stopped
        }
        guard first else { return }
        store.onUpdate = nil
        store.onRecord = nil
        store.onFetch = nil
        store.onLookup = nil
        store.lastPauseEnded = nil
        pauseDetector.stop()
        for link in links { link.stop() }
        // Under the lock: a socket's thread closes it only after taking it out of the state, so
        // these numbers are still ours (not reused by another socket since).
        state.withLock { s in
            if s.started {
                shutdownSocket(s.listener)  // the accept loop closes it
            } else {
                close(s.listener)
            }
            for fd in Array(s.inbound.keys) + s.pending { shutdownSocket(fd) }
        }
    }

    var isStopped: Bool { state.withLock { $0.stopped } }

    // MARK: State transfer

    /// Pulls the full state from the first ready peer; becomes ready then, or
    /// alone when no ready peer answers within the join timeout.
    private func join() {
        let started = monotonicNanos()
        let joinNanos = UInt64(configuration.joinTimeoutMillis) * 1_000_000
        var reason = "no peers configured"
        while !isStopped {
            if links.allSatisfy({ $0.phase == .isSelf }) { break }
            var startingPeers = 0
            for link in links where link.isConnected {
                guard link.requestSnapshot() else { continue }
                let transferStarted = monotonicNanos()
                while link.transferPending && link.isConnected && !isStopped
                    && monotonicNanos() - transferStarted < 60_000_000_000
                {
                    usleep(500)
                }
                if case .done(let senderReady, let items) = link.transfer, senderReady {
                    state.withLock { $0.transferredItems = items }
                    reason = "received \(items) sessions and records from \(link.address)"
                    return becomeReady(started: started, reason: reason)
                }
                if case .done(false, _) = link.transfer { startingPeers += 1 }
            }
            let others = links.filter { $0.phase != .isSelf }.count
            if startingPeers == others {
                // Every peer is up and joining too: a new cluster (or all restarted), nobody to wait for.
                reason = "every peer is starting too: a new cluster"
                break
            }
            if monotonicNanos() - started >= joinNanos {
                reason = "no ready peer answered within \(configuration.joinTimeoutMillis) ms; starting alone"
                break
            }
            usleep(5_000)
        }
        becomeReady(started: started, reason: reason)
    }

    private func becomeReady(started: UInt64, reason: String) {
        guard !isStopped else { return }
        let millis = Int64((monotonicNanos() - started) / 1_000_000)
        state.withLock { $0.readyAfterMillis = millis }
        store.isReady = true
        core.logger.info("replication ready after \(millis) ms: \(reason)", metadata: ["sessions": "\(store.count)"])
    }

    // MARK: Inbound connections

    private func acceptLoop(_ listener: Int32) {
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
            switch error {
            case _ where evicted: break
            case .closed: break
            case .failed(let code) where fences && (code == EAGAIN || code == EWOULDBLOCK):
                if let peer {
                    declareDead(peer, reason: "it sent nothing for \(configuration.fenceAfterMillis) ms")
                }
            case .failed: core.logger.notice("replication connection from \(peerName) ended: \(error)")
            case .handshakeTimeout:
                core.counters.add(\.handshakesTimedOut)
                core.logger.notice("closed the replication connection from \(peerName): \(error)")
            case .fenced:
                core.counters.add(\.fencedConnectionsRefused)
                core.logger.notice("closed the replication connection from \(peerName): \(error)")
            case .badFrame:
                core.counters.add(\.framesRejected)
                core.logger.warning("closed the replication connection from \(peerName): \(error); nothing applied")
            case .protocolViolation:
                core.counters.add(\.protocolViolations)
                core.logger.warning("closed the replication connection from \(peerName): \(error); nothing applied")
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

    // MARK: Status

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

    public var counters: ReplicationCounters.Values {
        var values = core.counters.snapshot
        values.itemsSent = links.reduce(0) { $0 + $1.status.itemsSent }
        return values
    }

    /// Milliseconds from `start()` to ready (nil while not ready).
    public var readyAfterMillis: Int64? { state.withLock { $0.readyAfterMillis } }

    /// Prometheus text for `/metrics`.
    public func renderMetrics() -> String {
        let node = "node=\(jsonQuoted(configuration.nodeName))"
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
            peers.map { (",peer=\(jsonQuoted($0.address))", $0.connected ? "1" : "0") })
        metric(
            "session_replication_peer_lagging", "gauge", "1 while sync writes do not wait for the peer.",
            peers.map { (",peer=\(jsonQuoted($0.address))", $0.lagging ? "1" : "0") })
        metric(
            "session_replication_peer_queue_bytes", "gauge", "Bytes queued for the peer.",
            peers.map { (",peer=\(jsonQuoted($0.address))", "\($0.queuedBytes)") })
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
        for (name, help, value) in totals {
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
