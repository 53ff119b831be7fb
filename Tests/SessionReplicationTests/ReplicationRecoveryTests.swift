#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import SessionCore
@testable import SessionReplication
import Synchronization
import SystemSupport
import TestSupport
import Testing

// How a peer catches up with what it missed: a full resync after a queue overflow (async mode)
// and after a reconnection, and read-your-writes' brief wait for a change on its way. Node a
// replicates to b through a `LoopbackRelay` (which can stall or cut that link); b replicates to
// nobody, so b learns a's sessions only over that link (or by fetching them from a).
//
// No assertion here is on time: the waits for what must happen are bounded generously
// (`waitUntil`), and what must not happen is made impossible for the test's whole length (a relay
// that holds the bytes back), not for some milliseconds.

/// A 2-node cluster where a (node 0) replicates to b (node 1) through a relay, and b lists a (for
/// read-your-writes fetches over its own link) only when `bFetchesFromA`.
private func relayedCluster(
    maxQueueBytes: Int = 64 << 20, catchUpPolicy: ReplicatedSessionStore.CatchUpPolicy = .init(),
    bFetchesFromA: Bool = false, syncTimeoutMillis: Int = 5_000
) throws -> (LoopbackCluster, LoopbackRelay) {
    let relay = try LoopbackRelay()
    let relayAddress = relay.address
    do {
        let cluster = try LoopbackCluster(
            count: 2, mode: .async, syncTimeoutMillis: syncTimeoutMillis,
            peerLists: { a in [[a[0], relayAddress], bFetchesFromA ? [a[1], a[0]] : [a[1]]] },
            catchUpPolicy: catchUpPolicy, maxQueueBytes: maxQueueBytes,
            // A stalled link is not dropped (a send blocked this long) while a test holds it.
            peerIdleTimeoutMillis: 300_000)
        relay.forward(to: cluster.addresses[1].port)
        return (cluster, relay)
    } catch {
        relay.stop()
        throw error
    }
}

/// The attributes of `id` on `node`, nil when it has no such session.
private func attributes(_ node: ReplicationNode, _ id: SessionID) throws -> [String: [UInt8]]? {
    try node.store.load(id)?.attributes
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ReplicationRecoveryTests {
    /// Async mode: changes for a peer that does not read pile up in a bounded queue; when it is
    /// full, it is dropped and replaced by a full resync (counted as an overflow), so the peer
    /// ends up with every session as it is on the writer, over the same connection.
    @Test func anOverflowingAsyncQueueIsReplacedByAResyncThatBringsThePeerUpToDate() throws {
        // An async write waits up to syncTimeoutMillis for the kernel to take its change: 1 ms, so
        // the writes to the stalled peer below do not wait 5 s each (a bound on the test's length only).
        let (cluster, relay) = try relayedCluster(maxQueueBytes: 256 << 10, syncTimeoutMillis: 1)
        defer {
            cluster.shutdown()
            relay.stop()
        }
        try #require(cluster.startAndSettle())
        let (a, b) = (cluster[0], cluster[1])
        let before = a.counters
        let connections = relay.captures.count
        relay.holdRequests(true)  // b stops reading: a's changes fill the socket buffers, then a's queue

        // ~60 KB per session: the kernel's buffers (a few MB) fill within some hundreds of sessions,
        // then the 256 KiB queue within a few more. Bounded, should the overflow never come.
        let value = "\"" + String(repeating: "x", count: 60_000) + "\""
        var ids: [SessionID] = []
        while a.counters.queueOverflows == before.queueOverflows && ids.count < 1_500 {
            ids.append(try cluster.create(on: 0, ["v": value]))
        }
        try #require(a.counters.queueOverflows > before.queueOverflows, "no overflow after \(ids.count) sessions")
        // Changes after the overflow: a new value for the first session, one more session.
        _ = try a.store.apply(SessionDelta(id: ids[0], changes: [.set("after", json("1"))]))
        ids.append(try cluster.create(on: 0, ["v": "\"last\""]))
        #expect(a.peers.allSatisfy { $0.connected }, "an overflow does not drop the link")

        relay.holdRequests(false)
        let expected = try ids.map { try attributes(a, $0) }
        #expect(expected.allSatisfy { $0 != nil })
        let converged = waitUntil(timeout: 30) { zip(ids, expected).allSatisfy { (try? attributes(b, $0)) == $1 } }
        let missing = zip(ids, expected).filter { (try? attributes(b, $0)) != $1 }.count
        #expect(converged, "\(missing) of \(ids.count) sessions differ on b (it holds \(b.store.count))")
        let after = a.counters
        #expect(after.resyncs > before.resyncs, "the queue was replaced by a resync")
        #expect(relay.captures.count == connections, "over the same connection: a's link to b was never re-established")
    }

    /// A peer out of reach gets nothing (no queue: nothing is kept for it); when it is reachable
    /// again, the new connection starts with a full resync: it gets every session written,
    /// changed or invalidated while it was away.
    @Test func aReconnectingPeerGetsWhatWasWrittenWhileItWasAwayByAFullResync() throws {
        let (cluster, relay) = try relayedCluster()
        defer {
            cluster.shutdown()
            relay.stop()
        }
        try #require(cluster.startAndSettle())
        let (a, b) = (cluster[0], cluster[1])
        let kept = try cluster.create(on: 0, ["v": "1"])
        let doomed = try cluster.create(on: 0, ["v": "\"doomed\""])
        #expect(waitUntil(timeout: 10) { b.store.count == 2 })

        let connections = relay.captures.count
        relay.cut()
        try #require(waitUntil(timeout: 10) { a.peers.allSatisfy { !$0.connected } }, "a saw its link to b go")
        let resyncsBefore = a.counters.resyncs
        let written = try (0..<20).map { i in try cluster.create(on: 0, ["i": "\(i)"]) }
        _ = try a.store.apply(SessionDelta(id: kept, changes: [.set("v", json("2")), .increment("n", by: 3)]))
        try a.store.invalidate(doomed)
        // The link is refused for the whole time: b cannot have any of it.
        #expect(try attributes(b, written[0]) == nil && attributes(b, kept) == ["v": json("1")])

        relay.admit()
        #expect(waitUntil(timeout: 10) { a.peers.allSatisfy { $0.connected } }, "a reconnected to b")
        #expect(
            cluster.eventually(kept, on: [1], timeout: 10) { $0 == ["v": json("2"), "n": json("3")] },
            "the change made while b was away")
        #expect(
            waitUntil(timeout: 10) { written.enumerated().allSatisfy { i, id in (try? attributes(b, id)) == ["i": json("\(i)")] } },
            "the sessions created while b was away")
        #expect(cluster.eventually(doomed, on: [1], timeout: 10) { $0 == nil }, "the invalidation")
        #expect(a.counters.resyncs > resyncsBefore)
        #expect(relay.captures.count > connections, "over a new connection")
    }

    /// Read-your-writes: a request whose read token names a change this node has not merged yet
    /// waits (up to `waitMillis`) for the change to arrive by itself, woken by its merge, and sees it:
    /// no fetch, not the older copy.
    @Test func aReadWaitsBrieflyForAChangeOnItsWayAndSeesIt() throws {
        // A 60 s wait: the change arrives only when the test lets it, never by the clock.
        let (cluster, relay) = try relayedCluster(catchUpPolicy: .init(waitMillis: 60_000, fetchTimeoutMillis: 60_000))
        defer {
            cluster.shutdown()
            relay.stop()
        }
        let (a, b, id, token) = try changeHeldBackFromB(cluster, relay)

        let outcome = Mutex<Result<Bool, any Error>?>(nil)
        let done = startThreads(1) { _ in
            let result = Result { try b.store.catchUp(id, to: token) }
            outcome.withLock { $0 = result }
        }
        // Only to know when to let the change through (the store's waiting reads are internal).
        try #require(waitUntil(timeout: 10) { b.store.waiters.withLock { $0.waiting[id] != nil } }, "the read is waiting")
        #expect(outcome.withLock { $0 == nil }, "still waiting")
        relay.holdRequests(false)
        #expect(done.wait(timeout: .now() + 30) == .success)
        let caughtUp = try #require(outcome.withLock { $0 })
        #expect(try caughtUp.get(), "the change arrived within the wait")
        #expect(try attributes(b, id) == ["n": json("2")], "the read sees the new version")
        let counts = b.store.catchUpCounts
        #expect(counts.waited == 1 && counts.fetched == 0 && counts.gaveUp == 0)
        #expect(a.counters.fetchesServed == 0, "nothing fetched")
    }

    /// When the change does not arrive within the brief wait (here the relay holds it for the whole
    /// test), the read asks the peers for the session (docs: `catchUp`) and sees the new version.
    @Test func aReadWhoseChangeDoesNotArriveInTheWaitFetchesIt() throws {
        let (cluster, relay) = try relayedCluster(
            catchUpPolicy: .init(waitMillis: 20, fetchTimeoutMillis: 60_000), bFetchesFromA: true)
        defer {
            cluster.shutdown()
            relay.stop()
        }
        let (a, b, id, token) = try changeHeldBackFromB(cluster, relay)

        #expect(try b.store.catchUp(id, to: token))
        #expect(try attributes(b, id) == ["n": json("2")], "the read sees the new version")
        let counts = b.store.catchUpCounts
        #expect(counts.waited == 0 && counts.fetched == 1 && counts.gaveUp == 0)
        #expect(a.counters.fetchesServed == 1)
        relay.holdRequests(false)
    }
}

/// Settles `cluster` (a relayed to b), creates a session on a with `n` = 1 and waits until b has it,
/// then holds a's requests in `relay` and sets `n` = 2 on a: b still has the older copy. The two
/// nodes, the session's ID and a's read token for the change.
private func changeHeldBackFromB(
    _ cluster: LoopbackCluster, _ relay: LoopbackRelay
) throws -> (a: ReplicationNode, b: ReplicationNode, id: SessionID, token: String) {
    try #require(cluster.startAndSettle())
    let (a, b) = (cluster[0], cluster[1])
    let id = try cluster.create(on: 0, ["n": "1"])
    #expect(cluster.eventually(id, on: [1]) { $0 == ["n": json("1")] })

    relay.holdRequests(true)
    _ = try a.store.apply(SessionDelta(id: id, changes: [.set("n", json("2"))]))
    let token = try #require(a.store.readToken(for: id))
    #expect(try attributes(b, id) == ["n": json("1")], "held back: b has the older copy")
    return (a, b, id, token)
}
