#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SessionCore
import TestSupport
import Testing

@testable import SessionReplication

/// Membership and fencing (docs/replication.md, *Membership*): sync mode with a majority quorum.
@Suite("Membership", .serialized, .timeLimit(.minutes(2)))
struct MembershipTests {
    /// A peer's change, as an update frame for a session of its own.
    private func sessionFrom(_ peer: RawPeer) throws -> SessionID {
        let id = SessionID.generate()
        peer.sendSealed([try forgedUpdateFrame(for: id, sequence: 1)])
        return id
    }

    @Test func aSilentPeersIncarnationIsDeclaredDeadAndWhatItSendsLaterIsRefused() throws {
        let cluster = try LoopbackCluster(
            count: 1, mode: .sync, alsoAccepting: [rawPeerAddress], pingIntervalMillis: 100, fenceAfterMillis: 400)
        defer { cluster.shutdown() }
        cluster.start()
        let node = cluster[0]
        #expect(node.waitUntilReady(timeoutMillis: 5_000))

        // Incarnation 77 connects and replicates a change: applied and acknowledged.
        let first = try RawPeer(port: node.port)
        #expect(try first.handshake(hello: rawHello(incarnation: 77)))
        let applied = try sessionFrom(first)
        #expect(first.readFrames(1)?.map(\.type) == [.ack])
        #expect(try node.store.load(applied) != nil)

        // Then it is silent (frozen, or cut off): declared dead, its connection closed.
        #expect(first.readUntilClosed().closed, "closed after 400 ms of silence")
        #expect(node.counters.peersDeclaredDead == 1)

        // The same incarnation comes back: told it was fenced and closed; its change is not applied.
        let again = try RawPeer(port: node.port)
        #expect(try again.handshake(hello: rawHello(incarnation: 77)))
        let refused = try sessionFrom(again)
        let notice = try #require(again.readFrames(1))
        #expect(notice.map(\.type) == [.fenced])
        #expect(try FencedNotice.decode(notice[0].payload).incarnation == 77)
        #expect(again.readUntilClosed().closed)
        #expect(node.counters.fencedConnectionsRefused == 1)

        // A new incarnation (the peer rejoined) is a member: the same kind of change is applied.
        let rejoined = try RawPeer(port: node.port)
        #expect(try rejoined.handshake(hello: rawHello(incarnation: 78)))
        let later = try sessionFrom(rejoined)
        #expect(rejoined.readFrames(1)?.map(\.type) == [.ack])
        #expect(try node.store.load(later) != nil)
        #expect(try node.store.load(refused) == nil, "the fenced incarnation's change never got in")
    }

    @Test func withoutAQuorumASilentPeerIsNotFenced() throws {
        let cluster = try LoopbackCluster(
            count: 1, mode: .sync, alsoAccepting: [rawPeerAddress], pingIntervalMillis: 100, quorum: ReplicationConfiguration.Quorum.none,
            fenceAfterMillis: 400)
        defer { cluster.shutdown() }
        cluster.start()
        let node = cluster[0]
        #expect(node.waitUntilReady(timeoutMillis: 5_000))
        let peer = try RawPeer(port: node.port, receiveTimeoutMillis: 1_000)
        #expect(try peer.handshake(hello: rawHello(incarnation: 77)))
        #expect(!peer.readUntilClosed().closed, "still open after 1 s of silence")
        let id = try sessionFrom(peer)
        #expect(peer.readFrames(1)?.map(\.type) == [.ack])
        #expect(try node.store.load(id) != nil)
        #expect(node.counters.peersDeclaredDead == 0)
    }

    @Test func aRejoiningNodeRefusesRequestsUntilItHoldsItsPeersStateAndNotItsOwn() throws {
        let cluster = try LoopbackCluster(count: 3, mode: .sync, syncTimeoutMillis: 2_000)
        defer { cluster.shutdown() }
        #expect(cluster.startAndSettle())
        let shared = try cluster.create(on: 0, ["n": "1"])
        #expect(cluster.eventually(shared) { $0?["n"] == json("1") })
        // A session only node c holds, as a write of its own no peer acknowledged.
        let unconfirmed = SessionID.generate()
        let forger = ReplicatedSessionStore(node: cluster.configurations[2].nodeID)
        _ = try forger.apply(SessionDelta(id: unconfirmed, changes: [.set("u", json("1"))], createIfMissing: true))
        #expect(cluster[2].store.merge(try #require(forger.fullState(of: unconfirmed))))
        let before = cluster[2].core.membership.incarnation

        cluster[2].rejoin(reason: "a test")
        #expect(cluster[2].isRejoining)
        #expect(cluster[2].core.membership.incarnation != before, "a new incarnation")
        do {
            _ = try cluster[2].store.load(shared)
            Issue.record("a rejoining node served a request")
        } catch let error as SessionStoreError {
            #expect(error.code == .unavailable, "\(error)")
        }

        #expect(waitUntil(timeout: 10) { cluster[2].isReady && !cluster[2].isRejoining })
        #expect(try cluster[2].store.load(shared)?.attributes["n"] == json("1"), "the peers' sessions")
        #expect(try cluster[2].store.load(unconfirmed) == nil, "its own unconfirmed write is gone")
        for i in [0, 1] { #expect(try cluster[i].store.load(unconfirmed) == nil, "and never reached node \(i)") }
        // A member again: its writes reach the others, theirs reach it.
        let after = try cluster.create(on: 2, ["m": "2"])
        #expect(cluster.eventually(after) { $0?["m"] == json("2") })
        let fromA = try cluster.create(on: 0, ["k": "3"])
        #expect(cluster.eventually(fromA, on: [2]) { $0?["k"] == json("3") })
        #expect(cluster[2].counters.rejoins == 1)
    }

    /// CP reads: a node that cannot get the state its client last saw refuses instead of serving an older one.
    @Test(arguments: [ReplicationConfiguration.Quorum.majority, .none])
    func aCatchUpThatGivesUpRefusesWithAMajorityQuorum(quorum: ReplicationConfiguration.Quorum) throws {
        // Two nodes that replicate to nobody: b never gets a's write, and has no peer to fetch it from.
        let cluster = try LoopbackCluster(count: 2, mode: .sync, peerIndices: [[0], [1]], quorum: quorum)
        defer { cluster.shutdown() }
        #expect(cluster.startAndSettle())
        let id = try cluster.create(on: 0, ["n": "1"])
        let token = try #require(cluster[0].store.readToken(for: id))
        switch quorum {
        case .majority:
            #expect(throws: SessionStoreError.self) { try cluster[1].store.catchUp(id, to: token) }
        case .none:
            #expect(try !cluster[1].store.catchUp(id, to: token), "gives up; the request sees what b has")
        }
        #expect(cluster[1].store.catchUpCounts.gaveUp == 1)
    }

    @Test(arguments: [ReplicationConfiguration.Quorum.majority, .none])
    func aSyncNodeWithoutAMajorityRefusesWritesAndStopsServing(quorum: ReplicationConfiguration.Quorum) throws {
        let cluster = try LoopbackCluster(count: 3, mode: .sync, syncTimeoutMillis: 200, quorum: quorum)
        defer { cluster.shutdown() }
        #expect(cluster.startAndSettle())
        let id = try cluster.create(on: 2, ["n": "1"])
        cluster[0].shutdown()
        cluster[1].shutdown()
        #expect(waitUntil(timeout: 5) { cluster[2].peers.allSatisfy { !$0.connected } })

        let write = Result { try cluster[2].store.apply(SessionDelta(id: id, changes: [.set("n", json("2"))])) }
        switch quorum {
        case .majority:
            guard case .failure(let error as SessionStoreError) = write else {
                Issue.record("a write without a majority succeeded: \(write)")
                return
            }
            #expect(error.code == SessionStoreError.Code.unavailable, "\(error)")
            #expect(cluster[2].isRejoining && !cluster[2].isReady)
            #expect(cluster[2].counters.writesWithoutMajority == 1)
            usleep(800_000)  // past the join timeout (300 ms): no peer to rejoin, still refusing
            #expect(!cluster[2].isReady)
            #expect(throws: SessionStoreError.self) { try cluster[2].store.load(id) }
        case .none:
            guard case .success(let applied) = write else {
                Issue.record("without a quorum the write goes on alone: \(write)")
                return
            }
            #expect(applied != nil && cluster[2].isReady && cluster[2].counters.writesWithoutMajority == 0)
        }
    }
}
