#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Foundation
import Logging
import Prometheus
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport
import TestSupport
import Testing

// What ReplicationNodeTests and ReplicationAttackTests share: in-process
// `ReplicationNode`s over real loopback sockets, a raw client that plays a
// peer (or an attacker), and a loopback relay that captures what passes.

/// JSON text as the bytes a session attribute holds.
func json(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A completed idempotency record for `key` (fingerprint `fp-KEY`, a 201 JSON answer).
func record(_ key: String) -> IdempotencyRecord {
    IdempotencyRecord(
        key: key, fingerprint: "fp-\(key)",
        response: StoredResponse(status: 201, headers: [["Content-Type", "application/json"]], body: json("{\"ok\":true}")),
        ttlMillis: 60_000)
}

/// The secret of every test cluster.
let replicationTestSecret = Array("replication-node-tests-cluster-secret".utf8)
/// Another cluster's.
let otherClusterSecret = Array("some-other-cluster-entirely-secret".utf8)

/// The address a `RawPeer` announces unless told otherwise: a cluster built
/// with `alsoAccepting: [rawPeerAddress]` admits it, others refuse it.
let rawPeerAddress = PeerAddress(host: "127.0.0.1", port: 1)

/// Nodes "a", "b", "c"... on loopback. Every node is bound (its port taken)
/// at once; `start` starts some or all. Each node's peer list holds every
/// node's address, its own included: "127.0.0.1:port" (recognized by
/// address), or "localhost:port" with `selfAsLocalhost` (recognized only
/// by the hello it gets back from itself). `peerIndices` (by index) or
/// `peerLists` (by address, given every node's) make one-way links: the
/// nodes then accept every node of the cluster (`acceptedPeers`), and the
/// addresses in `alsoAccepting`. Node `i` sends its metrics to `metricsFactories[i]` when given.
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
        pingIntervalMillis: Int = 250, relayWindowMillis: Int = 5_000,
        keyLookups: ReplicationConfiguration.KeyLookups? = nil, handshakeTimeoutMillis: Int = 2_000,
        maxPendingHandshakes: Int = 16, quorum: ReplicationConfiguration.Quorum? = nil, fenceAfterMillis: Int = 1_000,
        metricsFactories: [PrometheusMetricsFactory?] = [], peerIdleTimeoutMillis: Int = 10_000
    ) throws {
        var lastError: (any Error)?
        for _ in 0..<5 {  // a port picked by freeLoopbackPort may be taken before it is bound again
            let ports = try (0..<count).map { _ in try Sockets.freeLoopbackPort() }
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
                        pingIntervalMillis: pingIntervalMillis, peerIdleTimeoutMillis: peerIdleTimeoutMillis,
                        relayWindowMillis: relayWindowMillis,
                        keyLookups: keyLookups, acceptedPeers: oneWay ? addresses + alsoAccepting : nil,
                        handshakeTimeoutMillis: handshakeTimeoutMillis, maxPendingHandshakes: maxPendingHandshakes,
                        quorum: quorum, fenceAfterMillis: fenceAfterMillis)
                    let store = ReplicatedSessionStore(node: configuration.nodeID, catchUpPolicy: catchUpPolicy)
                    nodes.append(
                        try ReplicationNode(
                            store: store, configuration: configuration, logger: quietLogger(),
                            metricsFactory: i < metricsFactories.count ? metricsFactories[i] : nil))
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
        throw lastError ?? TestError("no free loopback ports")
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
    protocolVersion: UInt32 = HelloMessage.currentProtocolVersion, incarnation: UInt64 = 77
) throws -> HelloMessage {
    try HelloMessage(
        nodeID: nodeID, nodeName: "raw-test-peer", protocolVersion: protocolVersion, address: address.description,
        incarnation: incarnation)
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

/// Whether `needle` occurs in `haystack`.
func containsBytes(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
    let first = needle[0]
    var i = 0
    let last = haystack.count - needle.count
    while i <= last {
        if haystack[i] == first && haystack[i..<i + needle.count].elementsEqual(needle) { return true }
        i += 1
    }
    return false
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

// MARK: - A loopback relay that captures what passes

/// A TCP relay on 127.0.0.1: every connection to `port` is forwarded to the
/// target port, and the bytes of each direction are kept. It can hold either
/// direction back (a stalled link), and cut its connections and refuse new ones
/// (a peer out of reach). `stop()` closes everything and waits for its threads.
final class LoopbackRelay: Sendable {
    /// What passed through one connection.
    struct Capture: Sendable {
        /// From the connecting side (a node's link) to the target.
        var toTarget: [UInt8] = []
        /// From the target back.
        var fromTarget: [UInt8] = []
    }

    private struct State {
        var captures: [Capture] = []
        /// By connection: the `holdEpoch` its pump saw last, nil once it ended.
        var seen: [Int: Int] = [:]
        /// Open sockets: shut down by `stop()` (each thread closes its own, after taking it out).
        var sockets: Set<Int32> = []
        var listening = true
        var stopped = false
    }

    let port: Int
    private let listener: Int32
    private let target = Atomic<Int>(0)
    private let holding = Atomic<Bool>(false)
    private let holdingRequests = Atomic<Bool>(false)
    /// Bumped by `holdRequests`; each pump notes the value it saw at the top of its loop (`seen`).
    private let holdEpoch = Atomic<Int>(0)
    private let refusing = Atomic<Bool>(false)
    private let state = Mutex(State())
    private let threads = DispatchGroup()

    /// Listens at once; forwards to `targetPort` (or the port `forward(to:)` sets before anyone connects).
    init(targetPort: Int = 0) throws {
        listener = try Sockets.listen(host: "127.0.0.1", port: 0)
        port = Sockets.localPort(listener)
        target.store(targetPort, ordering: .releasing)
        spawn { [self] in acceptLoop() }
    }

    var address: PeerAddress { PeerAddress(host: "127.0.0.1", port: port) }

    func forward(to port: Int) { target.store(port, ordering: .releasing) }

    /// While true, nothing from the target is passed on (it waits in the socket buffers).
    func holdReplies(_ hold: Bool) { holding.store(hold, ordering: .releasing) }

    /// While true, nothing from the connecting side is passed on: it waits in the socket
    /// buffers, and once they are full the sender's writes block (a stalled peer).
    /// Returns once every pump has seen it: no byte is passed on after `holdRequests(true)` returns.
    func holdRequests(_ hold: Bool) {
        holdingRequests.store(hold, ordering: .releasing)
        let epoch = holdEpoch.add(1, ordering: .acquiringAndReleasing).newValue
        let seen = waitUntil(timeout: 10) { state.withLock { s in s.seen.values.allSatisfy { $0 >= epoch } } }
        if !seen { Issue.record("a relay connection did not see the hold") }
    }

    /// Closes every open connection and refuses (accepts and closes at once) new ones until `admit()`.
    func cut() {
        refusing.store(true, ordering: .releasing)
        state.withLock { s in
            for fd in s.sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Forwards new connections again after `cut()`.
    func admit() { refusing.store(false, ordering: .releasing) }

    /// Every connection so far, in the order they were accepted.
    var captures: [Capture] { state.withLock { $0.captures } }

    /// Closes the listener and every connection; waits (at most 5 s) for the threads. Again: nothing.
    func stop() {
        let first = state.withLock { s -> Bool in
            guard !s.stopped else { return false }
            s.stopped = true
            // Under the lock, where no thread has closed them yet.
            for fd in s.sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
            if s.listening { _ = shutdown(listener, Int32(SHUT_RDWR)) }
            return true
        }
        guard first else { return }
        let finished = threads.wait(timeout: .now() + 5) == .success
        if !finished { Issue.record("the relay's threads did not stop") }
    }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        threads.enter()
        let group = threads
        Thread {
            body()
            group.leave()
        }.start()
    }

    private func acceptLoop() {
        defer {
            state.withLock { s in
                s.listening = false
                close(listener)
            }
        }
        while true {
            let client = Sockets.accept(listener)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            if refusing.load(ordering: .acquiring) {
                close(client)
                continue
            }
            let server: Int32
            do {
                server = try Sockets.connect(host: "127.0.0.1", port: target.load(ordering: .acquiring))
            } catch {
                close(client)
                continue
            }
            let index = state.withLock { s -> Int? in
                guard !s.stopped else { return nil }
                s.sockets.formUnion([client, server])
                s.captures.append(Capture())
                s.seen[s.captures.count - 1] = holdEpoch.load(ordering: .acquiring)
                return s.captures.count - 1
            }
            guard let index else {
                close(client)
                close(server)
                return
            }
            spawn { [self] in pump(client: client, server: server, index: index) }
        }
    }

    /// Passes bytes both ways until either side ends, then closes both.
    private func pump(client: Int32, server: Int32, index: Int) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        loop: while true {
            // The epoch first: a hold bumped it after setting the flag, so the flag read next is the new one.
            let epoch = holdEpoch.load(ordering: .acquiring)
            state.withLock { $0.seen[index] = epoch }
            let hold = holding.load(ordering: .acquiring)
            var fds: [pollfd] = []
            if !holdingRequests.load(ordering: .acquiring) { fds.append(pollfd(fd: client, events: Int16(POLLIN), revents: 0)) }
            if !hold { fds.append(pollfd(fd: server, events: Int16(POLLIN), revents: 0)) }
            let ready = Glibc.poll(&fds, nfds_t(fds.count), 20)
            if ready < 0 && errno != EINTR { break }
            if ready <= 0 { continue }
            for entry in fds where entry.revents != 0 {
                let from = entry.fd
                let to = from == client ? server : client
                let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break loop }
                let bytes = Array(buffer[0..<n])
                state.withLock { s in
                    if from == client {
                        s.captures[index].toTarget += bytes
                    } else {
                        s.captures[index].fromTarget += bytes
                    }
                }
                guard Sockets.writeAll(to, bytes) else { break loop }
            }
        }
        state.withLock { s in
            s.sockets.remove(client)
            s.sockets.remove(server)
            s.seen[index] = nil
        }
        close(client)
        close(server)
    }
}

/// Opens a captured connection with the cluster secret, as only a holder of
/// it can: both hellos are in clear, the keys follow from them and the
/// secret. The frames each side sent (their hello first), up to the first
/// that does not open (or the end of the capture).
func openCapture(_ capture: LoopbackRelay.Capture, secret: [UInt8] = replicationTestSecret) throws
    -> (client: [ReplicationFrame], server: [ReplicationFrame])
{
    func helloIn(_ bytes: [UInt8]) throws -> HelloMessage {
        var decoder = FrameDecoder()
        decoder.append(bytes)
        let frame = try #require(try decoder.next())
        return try HelloMessage.decode(frame.payload)
    }
    func frames(_ bytes: [UInt8], opener: FrameOpener) -> [ReplicationFrame] {
        var decoder = FrameDecoder()
        decoder.append(bytes)
        var out: [ReplicationFrame] = []
        do {
            guard let hello = try decoder.next() else { return [] }
            out.append(hello)
            decoder.startOpening(with: opener)
            while let frame = try decoder.next() { out.append(frame) }
        } catch {
            return out
        }
        return out
    }
    let clientHello = try helloIn(capture.toTarget)
    let serverHello = try helloIn(capture.fromTarget)
    let secret = try ClusterSecret(secret)
    let server = secret.connectionKeys(clientHello: clientHello, serverHello: serverHello, accepted: true)
    let client = secret.connectionKeys(clientHello: clientHello, serverHello: serverHello, accepted: false)
    return (frames(capture.toTarget, opener: server.open), frames(capture.fromTarget, opener: client.open))
}
