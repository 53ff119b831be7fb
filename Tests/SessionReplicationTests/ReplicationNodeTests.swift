#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Logging
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport
import TestSupport
import Testing

// In-process `ReplicationNode`s over real loopback sockets (LoopbackCluster,
// RawPeer: ReplicationTestSupport.swift).


private func describe(_ snapshot: SessionSnapshot?) -> String {
    guard let snapshot else { return "nil" }
    return snapshot.attributes.sorted { $0.key < $1.key }
        .map { "\($0.key)=\(String(decoding: $0.value, as: UTF8.self))" }.joined(separator: ",")
}

/// In a cluster where a (node 0) replicates to b only: a runs request "k1" (n += 1 on a new
/// session), as a node that then dies with its change on some peers only. Returns the session.
private func runK1OnAReachingOnlyB(_ cluster: LoopbackCluster) throws -> SessionID {
    let a = cluster[0]
    let id = try cluster.create(on: 0, [:])
    #expect(try a.store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
    _ = try a.store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)], idempotencyRecord: record("k1")))
    return id
}

/// A frame header as anyone may write it.
private func frameHeader(kind: UInt8, length: UInt32, version: UInt8 = FrameFormat.version) -> [UInt8] {
    var w = WireWriter()
    for b in FrameFormat.magic { w.u8(b) }
    w.u8(version)
    w.u8(kind)
    w.u32(length)
    return w.bytes
}

// MARK: - Tests

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ReplicationNodeTests {
    @Test func aWriteOnOneNodeIsReadableOnTheOthers() throws {
        // Own address spelled "localhost": found out only by the hello the node gets back from itself.
        let cluster = try LoopbackCluster(selfAsLocalhost: true)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle(), "peers: \(cluster.nodes.map(\.peers))")
        for node in cluster.nodes {
            #expect(node.peers.count == 2, "the self link is not listed among the peers")
            #expect(Set(node.peers.compactMap(\.name)).count == 2)
            #expect(node.readyAfterMillis != nil)
        }
        let id = try cluster.create(on: 0, ["user": "\"ada\"", "n": "1"])
        #expect(cluster.eventually(id, on: [1, 2]) { $0 == ["user": json("\"ada\""), "n": json("1")] })
        let versions = try cluster.nodes.map { try #require(try $0.store.load(id)).version }
        #expect(Set(versions).count == 1, "every node holds the same version: \(versions)")
        #expect(waitUntil(timeout: 10) { cluster[0].counters.itemsSent >= 2 }, "one item to each peer")
        #expect(cluster[1].counters.itemsReceived >= 1 && cluster[2].counters.itemsReceived >= 1)
        let metrics = prometheusSamples(cluster[1].renderMetrics())
        #expect(metrics["session_replication_ready{node=\"b\"}"] == 1)
        #expect(metrics["session_replication_sessions{node=\"b\"}"] == 1)
        #expect(metrics["session_replication_peer_connected{node=\"b\",peer=\"\(cluster.addresses[0])\"}"] == 1)
    }

    @Test func concurrentWritesToDifferentAttributesBothSurvive() throws {
        let cluster = try LoopbackCluster()
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let id = try cluster.create(on: 0, ["base": "0"])
        #expect(cluster.eventually(id) { $0?["base"] == json("0") })
        let failures = ThreadFailures()
        let finished = onThreads(2, seconds: 20) { i in
            let node = cluster[i]
            let name = i == 0 ? "x" : "y"
            for n in 1...50 {
                do {
                    let changes: [SessionChange] = [.set(name, json("\(n)")), .set("both", json("\"\(name)\(n)\""))]
                    if try node.store.apply(SessionDelta(id: id, changes: changes)) == nil {
                        failures.add("\(name)=\(n): session missing")
                    }
                } catch {
                    failures.add("\(name)=\(n): \(error)")
                }
            }
        }
        #expect(finished)
        #expect(failures.all.isEmpty, "\(failures.all)")
        let converged = waitUntil(timeout: 5) {
            let all = cluster.nodes.map { try? $0.store.load(id)?.attributes }
            return all.allSatisfy { $0 != nil && $0 == all[0] }
        }
        #expect(converged, "\(cluster.nodes.map { describe(try? $0.store.load(id)) })")
        for node in cluster.nodes {
            let attributes = try #require(try node.store.load(id)).attributes
            #expect(attributes["base"] == json("0"))
            #expect(attributes["x"] == json("50"), "A's last write survives")
            #expect(attributes["y"] == json("50"), "B's last write survives")
            #expect(attributes["both"] == json("\"x50\"") || attributes["both"] == json("\"y50\""))
        }
    }

    @Test(arguments: [ReplicationConfiguration.Mode.async, .sync])
    func threeNodesIncrementingOneCounterLoseNothing(mode: ReplicationConfiguration.Mode) throws {
        let cluster = try LoopbackCluster(mode: mode)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let id = try cluster.create(on: 0, [:])
        #expect(cluster.eventually(id) { $0 != nil })
        let failures = ThreadFailures()
        let finished = onThreads(3, seconds: 30) { i in
            var last: Int64 = 0
            for n in 1...500 {
                do {
                    let applied = try cluster[i].store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)]))
                    guard let value = applied?.counters["n"] else {
                        failures.add("node \(i) increment \(n): session missing")
                        continue
                    }
                    if value <= last { failures.add("node \(i): the counter went from \(last) to \(value)") }
                    last = value
                } catch {
                    failures.add("node \(i) increment \(n): \(error)")
                }
            }
        }
        #expect(finished)
        #expect(failures.all.isEmpty, "\(failures.all.prefix(10))")
        if mode == .sync {
            // Every increment was acknowledged by both peers before it returned: nothing to wait for.
            #expect(cluster.nodes.map(\.counters.syncTimeouts) == [0, 0, 0])
            for node in cluster.nodes { #expect(try node.store.load(id)?.attributes["n"] == json("1500")) }
        }
        #expect(cluster.eventually(id) { $0?["n"] == json("1500") })
        let values = cluster.nodes.map { node in (try? node.store.load(id)?.attributes["n"]).flatMap { $0 } }
        #expect(values.map { $0.map { String(decoding: $0, as: UTF8.self) } } == ["1500", "1500", "1500"])
    }

    @Test func invalidateAndRegenerateReplicate() throws {
        let cluster = try LoopbackCluster()
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let doomed = try cluster.create(on: 0, ["user": "\"ada\""])
        let moving = try cluster.create(on: 0, ["user": "\"grace\"", "n": "3"])
        #expect(cluster.eventually(doomed) { $0 != nil } && cluster.eventually(moving) { $0 != nil })

        try cluster[1].store.invalidate(doomed)
        #expect(cluster.eventually(doomed) { $0 == nil }, "invalidated on every node")
        // Every node has the invalidation now: each refuses to bring the ID back, the documented way
        // (apply returns nil, even with createIfMissing), not by failing.
        for (i, node) in cluster.nodes.enumerated() {
            let reused = try node.store.apply(SessionDelta(id: doomed, changes: [.set("a", json("1"))], createIfMissing: true))
            #expect(reused == nil, "an invalidated ID is never reused: node \(i) created it again")
            #expect(try node.store.load(doomed) == nil)
        }

        let moved = SessionID.generate()
        #expect(try cluster[2].store.regenerate(moving, to: moved))
        #expect(cluster.eventually(moved) { $0 == ["user": json("\"grace\""), "n": json("3")] })
        #expect(cluster.eventually(moving) { $0 == nil }, "the old ID stops working everywhere")
        for node in cluster.nodes {
            #expect(try node.store.apply(SessionDelta(id: moving, changes: [.set("x", json("1"))])) == nil)
        }
        // The regenerated session keeps replicating under its new ID.
        _ = try cluster[0].store.apply(SessionDelta(id: moved, changes: [.increment("n", by: 1)]))
        #expect(cluster.eventually(moved) { $0?["n"] == json("4") })
    }

    @Test func idempotencyRecordsReplicate() throws {
        let cluster = try LoopbackCluster()
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        // A request that changed no session: claimed and completed on A.
        #expect(try cluster[0].store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
        try cluster[0].store.complete(record("k1"))
        // A request that did: its record rides in the delta, written on B.
        let id = try cluster.create(on: 1, [:])
        #expect(try cluster[1].store.begin(key: "k2", fingerprint: "fp-k2", inProgressMillis: 10_000) == .claimed)
        _ = try #require(
            try cluster[1].store.apply(
                SessionDelta(id: id, changes: [.increment("n", by: 1)], idempotencyRecord: record("k2"))))

        let arrived = waitUntil(timeout: 5) {
            cluster.nodes.allSatisfy { Set($0.store.recordSnapshot().map(\.record.key)) == ["k1", "k2"] }
        }
        #expect(arrived, "\(cluster.nodes.map { $0.store.recordSnapshot().map(\.record.key) })")
        for (i, node) in cluster.nodes.enumerated() {
            for key in ["k1", "k2"] {
                #expect(
                    try node.store.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000)
                        == .completed(record(key).response), "node \(i), \(key)")
                #expect(try node.store.begin(key: key, fingerprint: "other", inProgressMillis: 10_000) == .mismatch)
            }
        }
    }

    @Test func aLateNodeGetsEverySessionByStateTransferBeforeItIsReady() throws {
        let cluster = try LoopbackCluster()  // c is bound (its port held) but started later
        defer { cluster.shutdown() }
        cluster.start([0, 1])
        #expect(waitUntil(timeout: 5) { cluster[0].isReady && cluster[1].isReady })

        let total = 10_000
        var ids: [SessionID] = []
        ids.reserveCapacity(total)
        for i in 0..<total {
            let id = SessionID.generate()
            let delta = SessionDelta(id: id, changes: [.set("i", json("\(i)"))], createIfMissing: true)
            _ = try #require(try cluster[i % 2].store.apply(delta))
            ids.append(id)
        }
        try cluster[0].store.complete(record("before-c"))
        #expect(waitUntil(timeout: 10) { cluster[0].store.count == total && cluster[1].store.count == total })

        let late = cluster[2]
        #expect(!late.isReady)
        #expect(late.readyAfterMillis == nil)
        #expect(throws: SessionStoreError.self) { _ = try late.store.load(ids[0]) }
        do {
            _ = try late.store.apply(SessionDelta(id: SessionID.generate(), changes: [], createIfMissing: true))
            Issue.record("a node that is not ready accepted a write")
        } catch let error as SessionStoreError {
            #expect(error.code == .unavailable)
        }

        late.start()
        // Whenever the node answers, it has every session. (30 s: a generous bound for a loaded machine
        // to transfer 10,000 small sessions; the loop ends at the first answer.)
        var samples = 0
        let deadline = monotonicMillis() + 30_000
        while monotonicMillis() < deadline {
            samples += 1
            do {
                let loaded = try late.store.load(ids[samples % total])
                let count = late.store.count
                #expect(count >= total, "answered with only \(count) sessions")
                #expect(loaded?.attributes["i"] == json("\(samples % total)"))
                break
            } catch let error as SessionStoreError {
                #expect(error.code == .unavailable)
                #expect(!late.isReady || late.store.count >= total)
            }
        }
        #expect(late.isReady)
        #expect(late.store.count == total)
        #expect(late.readyAfterMillis != nil)
        #expect(cluster[0].counters.snapshotsServed + cluster[1].counters.snapshotsServed >= 1)
        for i in stride(from: 0, to: total, by: 97) {
            #expect(try late.store.load(ids[i])?.attributes == ["i": json("\(i)")])
        }
        #expect(try late.store.begin(key: "before-c", fingerprint: "fp-before-c", inProgressMillis: 1_000)
            == .completed(record("before-c").response))
        // And it takes part like any node from then on.
        let fresh = try cluster.create(on: 2, ["from": "\"c\""])
        #expect(cluster.eventually(fresh) { $0 == ["from": json("\"c\"")] })
    }

    @Test func badFramesCloseTheConnectionAndApplyNothing() throws {
        let cluster = try LoopbackCluster(alsoAccepting: [rawPeerAddress])
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let target = cluster[1]
        let countBefore = target.store.count

        enum Opening {
            /// The bytes are the first the node gets.
            case none
            /// A complete handshake with the cluster secret first.
            case handshake
            /// A handshake with another cluster's secret: the node's confirmation does not open,
            /// the raw peer goes on with keys of its own.
            case wrongSecret
            /// Hellos exchanged with the cluster secret, but no key confirmation sent.
            case unconfirmed
        }
        enum Reply {
            /// Not a byte (no hello, no ack).
            case nothing
            /// Its hello only (so the peer can log what it met), then the close.
            case hello
        }
        struct Case {
            var name: String
            var opening: Opening
            var bytes: (RawPeer, SessionID) throws -> [UInt8]
            /// The counter the case increments: protocolViolations (true) or framesRejected (false).
            var violation: Bool
            /// Before a handshake: what the node answers. After one: never anything beyond it.
            var reply = Reply.nothing
        }
        let update = { (peer: RawPeer, id: SessionID) throws -> [UInt8] in peer.seal([try forgedUpdateFrame(for: id)]) }
        let cases: [Case] = [
            // Before the handshake: only a hello of at most 2048 bytes is even read.
            Case(
                name: "garbage (an HTTP request)", opening: .none,
                bytes: { _, _ in json("GET / HTTP/1.1\r\nHost: x\r\n\r\n") }, violation: false),
            Case(name: "zero bytes", opening: .none, bytes: { _, _ in [UInt8](repeating: 0, count: 64) }, violation: false),
            Case(
                name: "a hello announcing 4 GiB", opening: .none,
                bytes: { _, _ in frameHeader(kind: 1, length: .max) + [UInt8](repeating: 1, count: 100) }, violation: false),
            Case(
                name: "a hello one byte over 2048 (refused from its header)", opening: .none,
                bytes: { _, _ in frameHeader(kind: 1, length: UInt32(FrameFormat.maxHelloBytes + 1)) }, violation: false),
            Case(
                name: "unknown frame kind", opening: .none,
                bytes: { _, _ in frameHeader(kind: 0x7F, length: 0) + [UInt8](repeating: 0, count: 32) }, violation: false),
            Case(
                name: "a hello of frame format 1 (an old node)", opening: .none,
                bytes: { _, _ in
                    let hello = try rawHello().encode()
                    return frameHeader(kind: FrameType.hello.rawValue, length: UInt32(hello.count), version: 1) + hello
                        + [UInt8](repeating: 0xAB, count: 32)
                }, violation: false),
            Case(
                name: "a sealed update before the handshake", opening: .none,
                bytes: { _, id in
                    let hello = try rawHello()
                    let keys = try ClusterSecret(replicationTestSecret).connectionKeys(
                        clientHello: hello, serverHello: hello.renewed(), accepted: false)
                    return keys.seal.seal(try forgedUpdateFrame(for: id))
                }, violation: false),
            Case(
                name: "a hello that does not decode", opening: .none,
                bytes: { _, _ in frameHeader(kind: 1, length: 3) + [1, 2, 3] }, violation: true),
            Case(
                name: "a hello of another protocol version", opening: .none,
                bytes: { _, id in
                    FrameFormat.helloFrame(try rawHello(protocolVersion: 2)) + frameHeader(kind: 2, length: 17)
                        + [UInt8](repeating: 0, count: 17)
                }, violation: true, reply: .hello),
            // The handshake itself.
            Case(
                name: "a key confirmation and an update with another cluster's secret", opening: .wrongSecret,
                bytes: update, violation: false),
            Case(name: "an update instead of the key confirmation", opening: .unconfirmed, bytes: update, violation: true),
            // After it: every frame sealed, in order.
            Case(
                name: "one flipped bit in the ciphertext", opening: .handshake,
                bytes: { peer, id in
                    var frame = try update(peer, id)
                    frame[FrameFormat.headerByteCount + 3] ^= 0x10
                    return frame
                }, violation: false),
            Case(
                name: "one flipped bit in the tag", opening: .handshake,
                bytes: { peer, id in
                    var frame = try update(peer, id)
                    frame[frame.count - 1] ^= 1
                    return frame
                }, violation: false),
            Case(
                name: "an update sealed under another connection's keys", opening: .handshake,
                bytes: { peer, id in
                    let other = try ClusterSecret(replicationTestSecret).connectionKeys(
                        clientHello: try #require(peer.hello).renewed(), serverHello: try #require(peer.nodeHello),
                        accepted: false
                    ).seal
                    _ = other.seal(ReplicationFrame(type: .keyConfirmation))  // at the same counter as this connection's
                    return other.seal(try forgedUpdateFrame(for: id))
                }, violation: false),
            Case(
                name: "garbage after the handshake", opening: .handshake,
                bytes: { _, _ in (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37) } }, violation: false),
            Case(
                name: "a sealed frame announcing 4 GiB", opening: .handshake,
                bytes: { _, _ in frameHeader(kind: 2, length: .max) + [UInt8](repeating: 1, count: 100) },
                violation: false),
            Case(
                name: "one byte over the payload limit", opening: .handshake,
                bytes: { _, _ in
                    frameHeader(kind: 2, length: UInt32(FrameFormat.defaultMaxPayloadBytes + 1 + FrameFormat.tagByteCount + 1))
                }, violation: false),
            Case(
                name: "unknown frame kind after the handshake", opening: .handshake,
                bytes: { _, _ in frameHeader(kind: 0x7F, length: 17) + [UInt8](repeating: 0, count: 17) }, violation: false),
            Case(
                name: "unknown frame version after the handshake", opening: .handshake,
                bytes: { peer, id in
                    var frame = try update(peer, id)
                    frame[4] = FrameFormat.version + 1
                    return frame
                }, violation: false),
            Case(
                name: "a second hello", opening: .handshake,
                bytes: { peer, id in FrameFormat.helloFrame(try rawHello()) + (try update(peer, id)) }, violation: false),
            Case(
                name: "a valid snapshot chunk (outbound-only type) with a session", opening: .handshake,
                bytes: { peer, id in peer.seal([try forgedUpdateFrame(for: id, sequence: 0, type: .snapshotChunk)]) },
                violation: true),
            Case(
                name: "a second key confirmation", opening: .handshake,
                bytes: { peer, id in peer.seal([ReplicationFrame(type: .keyConfirmation), try forgedUpdateFrame(for: id)]) },
                violation: true),
            Case(
                name: "an update whose payload does not decode", opening: .handshake,
                bytes: { peer, _ in peer.seal([ReplicationFrame(type: .update, payload: [1, 2, 3])]) }, violation: true),
        ]

        var ids: [SessionID] = []
        for c in cases {
            let id = SessionID.generate()
            ids.append(id)
            let before = target.counters
            let peer = try RawPeer(port: target.port)
            defer { peer.disconnect() }
            switch c.opening {
            case .none: break
            case .handshake: #expect(try peer.handshake(), "\(c.name): handshake")
            case .wrongSecret:
                #expect(try !peer.handshake(secret: otherClusterSecret), "\(c.name): the node's confirmation does not open")
            case .unconfirmed: #expect(try peer.handshake(confirm: false), "\(c.name): handshake")
            }
            peer.send(try c.bytes(peer, id))
            let (received, closed) = peer.readUntilClosed()
            #expect(closed, "\(c.name): the node closes the connection")
            switch (c.opening, c.reply) {
            case (.none, .hello):
                var decoder = FrameDecoder()
                decoder.append(received)
                let hello = try #require(try decoder.next(), "\(c.name): the node answered the hello")
                #expect(hello.type == .hello && (try? HelloMessage.decode(hello.payload)) != nil)
                #expect(decoder.isAtFrameBoundary, "\(c.name): and sent nothing else (no key confirmation)")
            default:
                #expect(received.isEmpty, "\(c.name): the node sends nothing (no hello, no ack)")
            }
            let expected = (
                rejected: before.framesRejected + (c.violation ? 0 : 1),
                violations: before.protocolViolations + (c.violation ? 1 : 0))
            _ = waitUntil(timeout: 10) {
                (target.counters.framesRejected, target.counters.protocolViolations) == expected
            }
            #expect(target.counters.framesRejected == expected.rejected, "\(c.name)")
            #expect(target.counters.protocolViolations == expected.violations, "\(c.name)")
            #expect(target.counters.itemsReceived == before.itemsReceived, "\(c.name): nothing merged")
            #expect(target.counters.unknownPeersRefused == 0, "\(c.name)")
            #expect(target.store.fullState(of: id) == nil, "\(c.name): nothing applied")
        }
        #expect(target.store.count == countBefore)
        #expect(cluster.isFullyConnected, "the peers' own connections are untouched")
        let metrics = target.renderMetrics()
        #expect(metrics.contains("session_replication_frames_rejected_total{node=\"b\"} \(cases.filter { !$0.violation }.count)"))
        #expect(metrics.contains("session_replication_protocol_violations_total{node=\"b\"} \(cases.filter(\.violation).count)"))

        // The node still replicates normally...
        let id = try cluster.create(on: 0, ["after": "1"])
        #expect(cluster.eventually(id) { $0 == ["after": json("1")] })
        // ...and the same kind of frames, unbroken, are applied: the cases above failed only for what they broke.
        let good = SessionID.generate()
        let peer = try RawPeer(port: target.port)
        defer { peer.disconnect() }
        #expect(try peer.handshake())
        #expect(peer.sendSealed([try forgedUpdateFrame(for: good, sequence: 41)]))
        let replies = try #require(peer.readFrames(1))
        #expect(replies.map(\.type) == [.ack])
        #expect(try AckMessage.decode(replies[0].payload).sequence == 41)
        #expect(try target.store.load(good)?.attributes == ["forged": json("true")])
        for bad in ids { #expect(target.store.fullState(of: bad) == nil) }
    }

    @Test func aStreamEndingMidFrameAppliesNothingAndIsCountedAsRejected() throws {
        let cluster = try LoopbackCluster(count: 1, alsoAccepting: [rawPeerAddress])
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let node = cluster[0]
        let id = SessionID.generate()
        let peer = try RawPeer(port: node.port)
        defer { peer.disconnect() }
        #expect(try peer.handshake(), "the node answered the hello and confirmed the keys")
        let frame = peer.seal([try forgedUpdateFrame(for: id)])
        peer.send(Array(frame.prefix(frame.count - 5)))
        peer.finishSending()
        let (received, closed) = peer.readUntilClosed()
        #expect(closed)
        #expect(received.isEmpty, "no ack")
        #expect(node.store.fullState(of: id) == nil, "nothing applied")
        #expect(node.store.count == 0)
        // docs/replication.md and ReplicationCounters.framesRejected: a truncated frame is a rejected frame.
        _ = waitUntil(timeout: 10) { node.counters.framesRejected == 1 }
        #expect(node.counters.framesRejected == 1, "a frame cut short by the end of the stream is counted as rejected")
        #expect(node.counters.protocolViolations == 0)
    }

    @Test func readYourWritesFetchesFromThePeerThatHasTheWrite() throws {
        // a sends its changes to nobody; b lists a, so b can only learn a's writes by fetching them.
        let cluster = try LoopbackCluster(
            count: 2, peerIndices: [[0], [0, 1]],
            catchUpPolicy: .init(waitMillis: 5, fetchTimeoutMillis: 60_000))
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let (a, b) = (cluster[0], cluster[1])
        let id = try cluster.create(on: 0, ["user": "\"ada\""])
        _ = try a.store.apply(SessionDelta(id: id, changes: [.increment("n", by: 5)]))
        let token = try #require(a.store.readToken(for: id))
        usleep(50_000)
        #expect(try b.store.load(id) == nil, "b has not been told")

        #expect(try b.store.catchUp(id, to: token))
        #expect(try b.store.load(id)?.attributes == ["user": json("\"ada\""), "n": json("5")])
        #expect(b.store.readToken(for: id) == token)
        #expect(b.store.catchUpCounts.fetched == 1)
        #expect(a.counters.fetchesServed == 1)
        // Now current: no wait.
        #expect(try b.store.catchUp(id, to: token))
        #expect(b.store.catchUpCounts.current == 1)

        // A forged token from the far future is refused at once: no fetch (it would show on a as a
        // fetch served, and in the counts), and no wait: one for the fetch timeout would take 60 s;
        // the refusals run on a thread given 30 s, which they need microseconds of.
        let future = "\(SessionClock.system.nowMillis() + 86_400_000).0.\(a.configuration.nodeID)"
        let refusals = Mutex<[Bool]>([])
        let failures = ThreadFailures()
        let refused = startThreads(1) { _ in
            for forged in [future, token + "_" + future, "not-a-token"] {
                do {
                    let caughtUp = try b.store.catchUp(id, to: forged)
                    refusals.withLock { $0.append(!caughtUp) }
                } catch {
                    failures.add("\(forged): \(error)")
                }
            }
        }
        #expect(refused.wait(timeout: .now() + 30) == .success, "a forged token made the read wait")
        #expect(refusals.withLock { $0 } == [true, true, true], "the far future, one forged stamp in a vector, garbage")
        #expect(failures.all.isEmpty, "\(failures.all)")
        #expect(a.counters.fetchesServed == 1)
        let counts = b.store.catchUpCounts
        #expect(counts.waited == 0 && counts.fetched == 1 && counts.gaveUp == 0)
    }

    /// A node died after its change reached one peer but before it answered; the client's
    /// retry lands on a node the change never reached. That node must replay the peer's
    /// record, with the session's state, instead of running the request a second time.
    @Test func syncModeLooksUpAnUnknownKeyOnThePeersBeforeRunningIt() throws {
        // a sends its changes to nobody (it holds what the dead node's change left behind); b lists a.
        let cluster = try LoopbackCluster(count: 2, mode: .sync, peerIndices: [[0], [0, 1]])
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let (a, b) = (cluster[0], cluster[1])
        let id = try cluster.create(on: 0, [:])
        #expect(try a.store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
        _ = try a.store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)], idempotencyRecord: record("k1")))
        #expect(try b.store.load(id) == nil, "b has not been told")

        #expect(try b.store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .completed(record("k1").response))
        #expect(try b.store.load(id)?.attributes == ["n": json("1")], "the session came with the record")
        #expect(try b.store.begin(key: "k1", fingerprint: "other", inProgressMillis: 10_000) == .mismatch)
        // A key nobody knows is claimed.
        #expect(try b.store.begin(key: "k2", fingerprint: "fp-k2", inProgressMillis: 10_000) == .claimed)
        // A key running on a (claimed earlier) makes b wait for it, then replay a's outcome.
        #expect(try a.store.begin(key: "k3", fingerprint: "fp-k3", inProgressMillis: 10_000) == .claimed)
        #expect(try b.store.begin(key: "k3", fingerprint: "fp-k3", inProgressMillis: 10_000) == .inProgress)
        _ = try a.store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)], idempotencyRecord: record("k3")))
        #expect(try b.store.begin(key: "k3", fingerprint: "fp-k3", inProgressMillis: 10_000) == .completed(record("k3").response))
        #expect(try b.store.load(id)?.attributes == ["n": json("2")])

        // k1 and k3 were replayed from a's outcome, k2 was unknown everywhere, none timed out.
        let counts = b.store.keyLookupCounts
        #expect(counts.replayed == 2 && counts.unknown == 1 && counts.timedOut == 0)
        #expect(a.counters.keyLookupsServed >= 3, "a was asked for each key")
        #expect(a.renderMetrics().isEmpty == false)
        #expect(b.renderMetrics().contains("session_replication_key_lookup_total{node=\"b\",outcome=\"replayed\"} 2"))
    }

    /// a's change reaches b but not c, then a dies: b passes it on to c.
    @Test func aDeadPeersLastChangesArePassedOnBySurvivors() throws {
        let cluster = try LoopbackCluster(mode: .sync, peerIndices: [[0, 1], [0, 1, 2], [0, 1, 2]])
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let (a, b, c) = (cluster[0], cluster[1], cluster[2])
        let id = try runK1OnAReachingOnlyB(cluster)
        #expect(try b.store.load(id)?.attributes == ["n": json("1")], "sync: b has it when apply returns")
        #expect(try c.store.load(id) == nil, "a does not replicate to c")
        a.shutdown()
        #expect(cluster.eventually(id, on: [2]) { $0 == ["n": json("1")] }, "b relayed a's change to c")
        #expect(waitUntil(timeout: 5) { c.store.recordSnapshot().map(\.record.key) == ["k1"] }, "and its record")
        // b counts the relay after it sent it: c may have it a moment before.
        #expect(waitUntil(timeout: 5) { b.counters.relays == 1 && b.counters.itemsRelayed >= 1 })
        #expect(c.counters.relays == 0, "c got nothing from a")
    }

    /// a's change reaches b only, then a dies; the client's retry lands on b, which has the
    /// record: before answering with it, b makes sure c has the session the answer reports.
    @Test func aReplayIsAnsweredOnlyOnceEveryPeerHasItsSession() throws {
        let cluster = try LoopbackCluster(mode: .sync, peerIndices: [[0, 1], [0, 1, 2], [0, 1, 2]], relayWindowMillis: 0)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let (a, b, c) = (cluster[0], cluster[1], cluster[2])
        let id = try runK1OnAReachingOnlyB(cluster)
        a.shutdown()
        #expect(try c.store.load(id) == nil)
        #expect(try b.store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .completed(record("k1").response))
        #expect(try c.store.load(id)?.attributes == ["n": json("1")], "sync: c acknowledged the session before the replay")
    }

    @Test func whenPeerInDoubtLooksUpKeysOnlyAfterAPeerIsLost() throws {
        // No relay here, so only the lookup can find a's change.
        let cluster = try LoopbackCluster(
            mode: .sync, peerIndices: [[0, 1], [0, 1, 2], [0, 1, 2]], relayWindowMillis: 0, keyLookups: .whenPeerInDoubt)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let (a, b, c) = (cluster[0], cluster[1], cluster[2])
        #expect(try c.store.begin(key: "k0", fingerprint: "fp-k0", inProgressMillis: 10_000) == .claimed)
        #expect(c.store.keyLookupCounts.skipped == 1, "every peer settled: nobody asked")
        let id = try runK1OnAReachingOnlyB(cluster)
        a.shutdown()
        #expect(waitUntil(timeout: 5) { c.peers.contains { !$0.connected } }, "c saw a go")
        #expect(try c.store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .completed(record("k1").response))
        #expect(try c.store.load(id)?.attributes == ["n": json("1")])
        #expect(c.store.keyLookupCounts.replayed == 1)
        #expect(b.counters.relays == 0)
    }

    @Test func asyncModeDoesNotLookUpKeys() throws {
        let cluster = try LoopbackCluster(count: 2, mode: .async, peerIndices: [[0], [0, 1]])
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        #expect(try cluster[0].store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
        #expect(try cluster[1].store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
        #expect(cluster[0].counters.keyLookupsServed == 0)
    }

    @Test func aPeerThatDiesDoesNotHoldUpALookup() throws {
        // Lookups would wait 30 s for a peer that never answers.
        let cluster = try LoopbackCluster(
            mode: .sync, catchUpPolicy: .init(waitMillis: 5, fetchTimeoutMillis: 30_000))
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        cluster[2].shutdown()  // its sockets close, as a killed node's do
        #expect(try cluster[0].store.begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
        let counts = cluster[0].store.keyLookupCounts
        #expect((counts.unknown, counts.timedOut) == (1, 0), "the dead peer's answer counted as 'unknown' at once")
    }

    @Test func syncWritesAreOnEveryPeerWhenTheyReturn() throws {
        let cluster = try LoopbackCluster(mode: .sync, syncTimeoutMillis: 5_000)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let id = try cluster.create(on: 0, ["v": "0"])
        // No polling anywhere below: each write is on the others when apply returns.
        for (i, node) in cluster.nodes.enumerated() where i > 0 {
            #expect(try node.store.load(id)?.attributes["v"] == json("0"), "created on node \(i)")
        }
        for n in 1...30 {
            let writer = n % 3
            _ = try #require(
                try cluster[writer].store.apply(
                    SessionDelta(id: id, changes: [.set("v", json("\(n)")), .increment("n", by: 1)])))
            for (i, node) in cluster.nodes.enumerated() where i != writer {
                let attributes = try node.store.load(id)?.attributes
                #expect(attributes?["v"] == json("\(n)"), "write \(n) by node \(writer), read on node \(i)")
                #expect(attributes?["n"] == json("\(n)"))
            }
        }
        let other = SessionID.generate()
        #expect(try cluster[1].store.regenerate(id, to: other))
        #expect(try cluster[0].store.load(other)?.attributes["v"] == json("30"))
        #expect(try cluster[2].store.load(id) == nil)
        try cluster[2].store.invalidate(other)
        #expect(try cluster[0].store.load(other) == nil && cluster[1].store.load(other) == nil)
        try cluster[0].store.complete(record("sync-k"))
        #expect(
            try cluster[2].store.begin(key: "sync-k", fingerprint: "fp-sync-k", inProgressMillis: 1_000)
                == .completed(record("sync-k").response))
        #expect(cluster.nodes.map(\.counters.syncTimeouts) == [0, 0, 0])
    }
    /// Sync mode with a send queue too small for any change: a change that finds the link busy overflows
    /// the queue and reaches the peer in a full resync, which other changes race. A sync write must still
    /// return only once the peer has it (a resync's acknowledgement must not release a change it lacks).
    @Test func syncWritesThroughResyncsAreOnEveryPeerWhenTheyReturn() throws {
        let cluster = try LoopbackCluster(count: 2, mode: .sync, syncTimeoutMillis: 5_000, maxQueueBytes: 1)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        // Enough sessions that a resync's snapshot takes a while.
        for i in 0..<1_000 {
            _ = try cluster[0].store.apply(
                SessionDelta(id: SessionID.generate(), changes: [.set("i", json("\(i)"))], createIfMissing: true))
        }
        let failures = ThreadFailures()
        let writes = Atomic<Int>(0)
        // At least 200 writes with 20 of them through resyncs: the loop ends there, a count of
        // writes, not a time (20 s is only a bound should the overflows never come).
        let deadline = monotonicMillis() + 20_000
        let finished = onThreads(8, seconds: 40) { t in
            let id = SessionID.generate()
            var n = 0
            while (cluster[0].counters.queueOverflows < 20 || writes.load(ordering: .relaxed) < 200)
                && monotonicMillis() < deadline
            {
                n += 1
                do {
                    _ = try cluster[0].store.apply(
                        SessionDelta(id: id, changes: [.set("v", json("\(n)"))], createIfMissing: true))
                    writes.add(1, ordering: .relaxed)
                    let seen = try cluster[1].store.load(id)?.attributes["v"]
                    if seen != json("\(n)") {
                        failures.add("thread \(t) write \(n): b has \(seen.map { String(decoding: $0, as: UTF8.self) } ?? "nothing")")
                    }
                } catch {
                    failures.add("thread \(t) write \(n): \(error)")
                }
            }
        }
        #expect(finished)
        let overflows = cluster[0].counters.queueOverflows
        #expect(overflows > 0, "no change went through a resync in \(writes.load(ordering: .relaxed)) writes")
        #expect(cluster[0].counters.syncTimeouts == 0)
        #expect(
            failures.all.isEmpty,
            "\(failures.all.count) of \(writes.load(ordering: .relaxed)) sync writes (\(overflows) through resyncs) were not on b when they returned: \(failures.all.prefix(5))")
    }

    /// A busy link stays up: changes sent by the requests themselves, while the writer thread's
    /// ping deadline passes again and again, never cost a reconnect (and its full resync).
    @Test func aBusyLinkIsNeverDroppedNorResynced() throws {
        let cluster = try LoopbackCluster(count: 2, pingIntervalMillis: 2)
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle())
        let before = cluster[0].counters
        let failures = ThreadFailures()
        let deadline = monotonicMillis() + 1_000
        let finished = onThreads(4, seconds: 30) { t in
            let id = SessionID.generate()
            var n = 0
            while monotonicMillis() < deadline {  // about 500 ping deadlines
                n += 1
                do {
                    _ = try cluster[0].store.apply(
                        SessionDelta(id: id, changes: [.set("v", json("\(n)"))], createIfMissing: true))
                } catch {
                    failures.add("thread \(t) write \(n): \(error)")
                }
            }
        }
        #expect(finished)
        #expect(failures.all.isEmpty)
        let after = cluster[0].counters
        #expect(after.queueOverflows == before.queueOverflows, "no resync for a full queue")
        // The writer's ping deadline passing while a request sends its change itself must not end the link.
        #expect(after.resyncs == before.resyncs, "the link to b was dropped and resynced \(after.resyncs - before.resyncs) times")
        #expect(cluster[0].store.count == 4 && waitUntil(timeout: 5) { cluster[1].store.count == 4 })
    }
}
