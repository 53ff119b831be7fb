#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import MiniHTTP
import SessionCore
import SessionReplication
import Synchronization
import TestSupport
import Testing

// What ReplicationNodeTests and ReplicationAttackTests share: in-process
// `ReplicationNode`s over real loopback sockets, and a raw client that plays
// a peer (or an attacker).

private func json(_ text: String) -> [UInt8] { Array(text.utf8) }

/// The secret of every test cluster.
let replicationTestSecret = Array("replication-node-tests-cluster-secret".utf8)
/// Another cluster's.
let otherClusterSecret = Array("some-other-cluster-entirely-secret".utf8)

/// The address a `RawPeer` announces unless told otherwise: a cluster built
/// with `alsoAccepting: [rawPeerAddress]` admits it, others refuse it.
let rawPeerAddress = PeerAddress(host: "127.0.0.1", port: 1)

struct TestSetupError: Error, CustomStringConvertible {
    var description: String
}

func quietReplicationLogger() -> Logger {
    var logger = Logger(label: "replication-node-tests")
    logger.logLevel = .critical
    return logger
}

/// Nodes "a", "b", "c"... on loopback. Every node is bound (its port taken)
/// at once; `start` starts some or all. Each node's peer list holds every
/// node's address, its own included: "127.0.0.1:port" (recognized by
/// address), or "localhost:port" with `selfAsLocalhost` (recognized only
/// by the hello it gets back from itself). `peerIndices` (by index) or
/// `peerLists` (by address, given every node's) make one-way links: the
/// nodes then accept every node of the cluster (`acceptedPeers`), and the
/// addresses in `alsoAccepting`.
final class LoopbackCluster: Sendable {
    let nodes: [ReplicationNode]
    let addresses: [PeerAddress]
    let configurations: [ReplicationConfiguration]
    /// How many other nodes each node replicates to.
    let expectedPeerCounts: [Int]

    init(
        count: Int = 3, mode: ReplicationConfiguration.Mode = .async, syncTimeoutMillis: Int = 5_000,
        selfAsLocalhost: Bool = false, peerIndices: [[Int]]? = nil,
        peerLists: (@Sendable ([PeerAddress]) -> [[PeerAddress]])? = nil, alsoAccepting: [PeerAddress] = [],
        catchUpPolicy: ReplicatedSessionStore.CatchUpPolicy = .init(), maxQueueBytes: Int = 64 << 20,
        pingIntervalMillis: Int = 1_000, relayWindowMillis: Int = 5_000,
        keyLookups: ReplicationConfiguration.KeyLookups? = nil, handshakeTimeoutMillis: Int = 2_000,
        maxPendingHandshakes: Int = 16
    ) throws {
        var lastError: (any Error)?
        for _ in 0..<5 {  // a port picked by freeLoopbackPort may be taken before it is bound again
            let ports = try (0..<count).map { _ in try freeLoopbackPort() }
            guard Set(ports).count == count else { continue }
            let addresses = ports.map { PeerAddress(host: "127.0.0.1", port: $0) }
            let lists =
                peerLists?(addresses) ?? (0..<count).map { i in (peerIndices?[i] ?? Array(0..<count)).map { addresses[$0] } }
            let oneWay = peerIndices != nil || peerLists != nil || !alsoAccepting.isEmpty
            var nodes: [ReplicationNode] = []
            var configurations: [ReplicationConfiguration] = []
            do {
                for i in 0..<count {
                    var peers = lists[i]
                    if selfAsLocalhost, let own = peers.firstIndex(of: addresses[i]) {
                        peers[own] = PeerAddress(host: "localhost", port: ports[i])
                    }
                    let name = ["a", "b", "c", "d", "e"][i]
                    let configuration = ReplicationConfiguration(
                        nodeName: name, host: "127.0.0.1", port: ports[i], peers: peers,
                        secret: replicationTestSecret, mode: mode, syncTimeoutMillis: syncTimeoutMillis,
                        maxQueueBytes: maxQueueBytes, joinTimeoutMillis: 300,
                        connectTimeoutMillis: 500, reconnectBackoffMillis: (10, 200),
                        pingIntervalMillis: pingIntervalMillis, relayWindowMillis: relayWindowMillis,
                        keyLookups: keyLookups, acceptedPeers: oneWay ? addresses + alsoAccepting : nil,
                        handshakeTimeoutMillis: handshakeTimeoutMillis, maxPendingHandshakes: maxPendingHandshakes)
                    let store = ReplicatedSessionStore(node: configuration.nodeID, catchUpPolicy: catchUpPolicy)
                    nodes.append(
                        try ReplicationNode(store: store, configuration: configuration, logger: quietReplicationLogger()))
                    configurations.append(configuration)
                }
            } catch {
                for node in nodes { node.shutdown() }
                lastError = error
                continue
            }
            self.nodes = nodes
            self.addresses = addresses
            self.configurations = configurations
            expectedPeerCounts = (0..<count).map { i in Set(lists[i]).subtracting([addresses[i]]).count }
            return
        }
        throw lastError ?? TestSetupError(description: "no free loopback ports")
    }

    subscript(_ i: Int) -> ReplicationNode { nodes[i] }

    func start(_ indices: [Int]? = nil) {
        for i in indices ?? Array(nodes.indices) { nodes[i].start() }
    }

    func shutdown() {
        for node in nodes { node.shutdown() }
    }

    /// Starts every node; true once all are ready and every node's links to its peers are connected.
    func startAndSettle(timeout: Double = 5) -> Bool {
        start()
        return waitUntil(timeout: timeout) { nodes.allSatisfy(\.isReady) && isFullyConnected }
    }

    /// Every node knows its own address (its self link is gone from `peers`) and is connected to all its peers.
    var isFullyConnected: Bool {
        zip(nodes, expectedPeerCounts).allSatisfy { node, expected in
            let peers = node.peers
            return peers.count == expected && peers.allSatisfy { $0.connected && !$0.lagging }
        }
    }

    /// Creates a session on node `i` with these attributes (JSON texts).
    func create(on i: Int, _ attributes: [String: String]) throws -> SessionID {
        let id = SessionID.generate()
        let changes = attributes.sorted { $0.key < $1.key }.map { SessionChange.set($0.key, json($0.value)) }
        _ = try #require(try nodes[i].store.apply(SessionDelta(id: id, changes: changes, createIfMissing: true)))
        return id
    }

    /// Waits until `check` holds for the attributes of `id` on every node in `indices` (nil: no such
    /// session). A node that refuses the load (not ready) does not pass.
    func eventually(
        _ id: SessionID, on indices: [Int]? = nil, timeout: Double = 5,
        _ check: ([String: [UInt8]]?) -> Bool
    ) -> Bool {
        waitUntil(timeout: timeout) {
            (indices ?? Array(nodes.indices)).allSatisfy { i in
                let loaded: SessionSnapshot?
                do {
                    loaded = try nodes[i].store.load(id)
                } catch {
                    return false
                }
                return check(loaded?.attributes)
            }
        }
    }
}

/// Collects what failed on worker threads (no #expect off the test's own task).
final class ThreadFailures: Sendable {
    private let messages = Mutex<[String]>([])
    func add(_ message: String) { messages.withLock { $0.append(message) } }
    var all: [String] { messages.withLock { $0 } }
}

/// A hello as a raw peer sends it, with a fresh nonce.
func rawHello(
    nodeID: UInt32 = 0xBAD_BEEF, address: PeerAddress = rawPeerAddress,
    protocolVersion: UInt32 = HelloMessage.currentProtocolVersion
) throws -> HelloMessage {
    try HelloMessage(
        nodeID: nodeID, nodeName: "raw-test-peer", protocolVersion: protocolVersion, address: address.description,
        incarnation: 77)
}

/// A well-formed update for a new session `id`, stamped by a store of its own.
func forgedUpdateFrame(
    for id: SessionID, sequence: UInt64 = 1, type: FrameType = .update, attributes: [String: String] = ["forged": "true"]
) throws -> ReplicationFrame {
    let forger = ReplicatedSessionStore(node: 0xBAD_BEEF)
    let changes = attributes.sorted { $0.key < $1.key }.map { SessionChange.set($0.key, json($0.value)) }
    _ = try forger.apply(SessionDelta(id: id, changes: changes, createIfMissing: true))
    let update = try #require(forger.fullState(of: id))
    return ReplicationFrame(type: type, payload: UpdateBatch(sequence: sequence, items: [.session(update)]).encode())
}

// MARK: - A raw TCP client that plays a peer, or breaks the protocol

/// One connection to a node's replication port. It can run the real client
/// handshake (the public API: `FrameFormat.helloFrame`,
/// `ClusterSecret.connectionKeys`, `FrameSealer`, `FrameDecoder.startOpening`)
/// with any secret, or send whatever bytes an attacker would. Everything it
/// sends is kept in `sent`, for replays.
final class RawPeer {
    let fd: Int32
    /// Every byte sent on this connection, in order.
    private(set) var sent: [UInt8] = []
    /// The hello this peer sent in its handshake.
    private(set) var hello: HelloMessage?
    /// The node's hello, once received.
    private(set) var nodeHello: HelloMessage?
    /// Seals this peer's frames once the handshake derived the keys.
    private(set) var sealer: FrameSealer?
    private var decoder = FrameDecoder()
    private var isClosed = false

    init(port: Int, receiveTimeoutMillis: Int = 5_000) throws {
        fd = try Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 1_000)
        Sockets.setReceiveTimeout(fd, millis: receiveTimeoutMillis)
    }

    deinit { disconnect() }

    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        sent += bytes
        return Sockets.writeAll(fd, bytes)
    }

    /// Half-closes: the node sees the end of the stream.
    func finishSending() { _ = shutdown(fd, Int32(SHUT_WR)) }

    func disconnect() {
        guard !isClosed else { return }
        isClosed = true
        close(fd)
    }

    /// The client side of the handshake: sends `hello`, reads the node's
    /// hello, derives the keys with `secret`, opens the node's key
    /// confirmation and (with `confirm`) sends its own. True when the node's
    /// confirmation opened; with another secret it does not, and the keys
    /// (`sealer`) are set all the same, so the caller can go on as a peer
    /// that does not know it holds the wrong secret.
    @discardableResult
    func handshake(hello: HelloMessage? = nil, secret: [UInt8] = replicationTestSecret, confirm: Bool = true) throws
        -> Bool
    {
        let mine = try hello ?? rawHello()
        self.hello = mine
        send(FrameFormat.helloFrame(mine))
        guard let frames = readFrames(1), frames[0].type == .hello else { return false }
        let theirs = try HelloMessage.decode(frames[0].payload)
        nodeHello = theirs
        let keys = try ClusterSecret(secret).connectionKeys(clientHello: mine, serverHello: theirs, accepted: false)
        sealer = keys.seal
        decoder.startOpening(with: keys.open)
        let confirmed = readFrames(1)?.map(\.type) == [.keyConfirmation]
        if confirm { sendSealed([ReplicationFrame(type: .keyConfirmation)]) }
        return confirmed
    }

    /// Frames sealed with this connection's keys (after `handshake`), each taking the next counter.
    func seal(_ frames: [ReplicationFrame]) -> [UInt8] {
        guard let sealer else {
            Issue.record("seal before the handshake")
            return []
        }
        return sealer.seal(frames)
    }

    @discardableResult
    func sendSealed(_ frames: [ReplicationFrame]) -> Bool { send(seal(frames)) }

    /// Reads until `count` more frames arrived (nil on a bad frame, the end of the stream or a timeout).
    func readFrames(_ count: Int) -> [ReplicationFrame]? {
        var frames: [ReplicationFrame] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            do {
                // Never past `count`: a hello's followers need the keys it gives.
                while frames.count < count, let frame = try decoder.next() { frames.append(frame) }
            } catch {
                return nil
            }
            if frames.count >= count { return frames }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            decoder.append(buffer[0..<n])
        }
    }

    /// Reads until the node closes the connection (true) or the receive timeout
    /// passes (false); returns what it sent from then on (not what was read before).
    func readUntilClosed() -> (bytes: [UInt8], closed: Bool) {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                out += buffer[0..<n]
            } else if n == 0 {
                return (out, true)
            } else if errno == EINTR {
                continue
            } else {
                return (out, errno == ECONNRESET)
            }
        }
    }
}
