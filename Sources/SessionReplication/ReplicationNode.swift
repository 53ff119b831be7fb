#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CoreMetrics
import Logging
import SessionCore
import Synchronization
import SystemSupport

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
    /// Its `session_replication_*` series (`renderMetrics()`, `updateMetrics()`).
    let metrics: ReplicationMetrics

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
    ///
    /// `metricsFactory` receives the node's series through swift-metrics (e.g. `MetricsSystem.factory`
    /// after bootstrapping a backend of one's own; levels and totals are passed on every few seconds);
    /// nil keeps them in a Prometheus registry of the node's own, which `renderMetrics()` renders.
    public init(
        store: ReplicatedSessionStore, configuration: ReplicationConfiguration, logger: Logger,
        metricsFactory: (any MetricsFactory)? = nil
    ) throws {
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
        metrics = ReplicationMetrics(node: configuration.nodeName, factory: metricsFactory)
        let core = ReplicationNodeCore(
            configuration: configuration, secret: secret, hello: hello, logger: logger, store: store)
        self.core = core
        let pauseDetector = PauseDetector(
            windowNanos: UInt64(configuration.relayWindowMillis) * 1_000_000,
            onPause: { nanos in
                core.counters.add(\.pausesDetected)
                core.logger.warning(
                    "this node was frozen for \(nanos / 1_000_000) ms (SIGSTOP, a stalled VM): for \(configuration.relayWindowMillis) ms every idempotency key is looked up on every connected peer")
                // Frozen longer than peers wait before declaring a node dead: with a majority quorum
                // they have fenced this run; in async mode its clients have retried elsewhere what it
                // had applied and not sent. Either way it takes its peers' state again (see `rejoin`).
                if (configuration.fences || configuration.mode == .async)
                    && nanos >= UInt64(configuration.fenceAfterMillis) * 1_000_000
                {
                    core.owner?.rejoin(
                        reason: "this node was frozen for \(nanos / 1_000_000) ms; what it had not sent was retried elsewhere")
                }
            })
        self.pauseDetector = pauseDetector
        // Our own address in the list needs no connection; other spellings of it are found by the hello.
        links = Array(Set(configuration.peers)).filter { $0 != address }.sorted { $0.description < $1.description }
            .map { PeerLink(address: $0, node: core, pauseDetector: pauseDetector) }
        state = Mutex(State(listener: listener))
        store.isReady = false
        store.readTokenKey = HMACKey(secret.readTokenKey)
        store.refusesStaleReads = configuration.fences
        let links = links
        let mode = configuration.mode
        store.onUpdate = { updates in
            // Idle-timer refreshes never make a request wait.
            let touchOnly = updates.allSatisfy {
                $0.state.attributes.isEmpty && !$0.state.isInvalidated && $0.idempotencyRecord == nil
            }
            if touchOnly {
                _ = Self.replicate(updates.map { .session($0) }, to: links, mode: nil, core: core, pause: pauseDetector)
                return true
            }
            return Self.replicate(updates.map { .session($0) }, to: links, mode: mode, core: core, pause: pauseDetector)
        }
        store.onRecord = { record in
            Self.replicate([.record(record)], to: links, mode: mode, core: core, pause: pauseDetector)
        }
        store.onFetch = { id, request in links.reduce(0) { $0 + ($1.fetch(id, request: request) ? 1 : 0) } }
        let lookups = configuration.keyLookups
        let pause = pauseDetector
        // Exactly once across the cluster: a request looks for its key on the peers first
        // (a dying node's change may have reached only some; a first attempt may still run).
        // After this node was itself frozen, every connected peer is asked, lagging or not,
        // whatever `keyLookups` says: its clients' retries ran on them meanwhile (PauseDetector).
        store.lastPauseEnded = { pause.lastResume(now: monotonicNanos()) }
        // Who reports an expiry: this node and the peers it is connected to (rendezvous owner).
        let me = configuration.nodeID
        store.liveMembers = { [me] + links.filter(\.isConnected).compactMap(\.peerNodeID) }
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

    /// Sends a local write's items to every connected peer and says whether it may be answered.
    ///
    /// - sync: after every live peer acknowledged it, or `syncTimeoutMillis`; with a majority
    ///   quorum, a write fewer than a majority acknowledged is refused and the node rejoins.
    /// - async: once it was handed to the kernel for every connected peer (or the sync timeout
    ///   passed): a node that freezes right after answering still delivers what it answered.
    /// - nil (an idle-timer refresh): sent, never waited for.
    ///
    /// A write that meets a rejoin (this node was frozen, or lost its majority) is refused:
    /// its change is about to be dropped with this node's state.
    private static func replicate(
        _ items: [ReplicationItem], to links: [PeerLink], mode: ReplicationConfiguration.Mode?,
        core: ReplicationNodeCore, pause: PauseDetector
    ) -> Bool {
        pause.noticeIfOverdue(now: monotonicNanos())  // woken from a freeze: rejoin before sending
        let configuration = core.configuration
        let timeout = UInt64(configuration.syncTimeoutMillis) * 1_000_000
        switch mode {
        case nil:
            _ = send(items, to: links)
            return true
        case .async:
            let sequences = send(items, to: links)
            let deadline = monotonicNanos() + timeout
            let written = sequences.allSatisfy { $0.0.waitUntilWritten($0.1, until: deadline) }
            return written || !core.membership.isRejoining
        case .sync:
            let needed = configuration.fences ? othersNeeded(links) : 0
            let quorumTimeout = max(timeout, UInt64(configuration.fenceAfterMillis) * 1_000_000)
            let acknowledged = waitForAcks(
                send(items, to: links), timeout: timeout, quorumTimeout: quorumTimeout, othersNeeded: needed)
            guard acknowledged >= needed else { return core.refuseWithoutMajority(acknowledged: acknowledged, needed: needed) }
            return !core.membership.isRejoining
        }
    }

    /// Enqueues the items on every connected link; their sequence numbers.
    private static func send(_ items: [ReplicationItem], to links: [PeerLink]) -> [(PeerLink, UInt64)] {
        let bytes = items.count == 1 ? items[0].encoded : items.flatMap(\.encoded)
        var sequences: [(PeerLink, UInt64)] = []
        for link in links {
            if let sequence = link.enqueue(bytes, itemCount: items.count) { sequences.append((link, sequence)) }
        }
        return sequences
    }

    /// Sync mode: waits for the peers' acknowledgements and returns how many acknowledged. When
    /// fewer than `othersNeeded` did within `timeout`, the others — lagging ones too — are waited
    /// for until `quorumTimeout`: a write is refused for want of a majority only after as long as
    /// peers wait before declaring a node dead, never for one slow acknowledgement.
    private static func waitForAcks(
        _ sequences: [(PeerLink, UInt64)], timeout: UInt64, quorumTimeout: UInt64, othersNeeded: Int
    ) -> Int {
        guard !sequences.isEmpty else { return 0 }
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
        metrics.startRefreshing { [weak self] in self?.updateMetrics() }
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
        store.liveMembers = nil
        pauseDetector.stop()
        metrics.stopRefreshing()
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
                guard let transfer = transfer(from: link, limitNanos: 60_000_000_000) else { continue }
                if case .done(let senderReady, let items) = transfer, senderReady {
                    state.withLock { $0.transferredItems = items }
                    reason = "received \(items) sessions and records from \(link.address)"
                    return becomeReady(started: started, reason: reason)
                }
                if case .done(false, _) = transfer { startingPeers += 1 }
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

    /// Asks `link`'s peer for its state (see `PeerLink.requestSnapshot`) and waits while it comes,
    /// up to `limitNanos`; the transfer as it then stands, or nil when it could not be asked.
    func transfer(from link: PeerLink, onlyIfReady: Bool = false, replacingState: Bool = false, limitNanos: UInt64)
        -> PeerLink.Transfer?
    {
        guard link.requestSnapshot(onlyIfReady: onlyIfReady, replacingState: replacingState) else { return nil }
        let asked = monotonicNanos()
        while link.transferPending && link.isConnected && !isStopped && monotonicNanos() - asked < limitNanos {
            usleep(500)
        }
        return link.transfer
    }

    private func becomeReady(started: UInt64, reason: String) {
        guard !isStopped else { return }
        let millis = Int64((monotonicNanos() - started) / 1_000_000)
        state.withLock { $0.readyAfterMillis = millis }
        store.isReady = true
        core.logger.info("replication ready after \(millis) ms: \(reason)", metadata: ["sessions": "\(store.count)"])
    }

}
