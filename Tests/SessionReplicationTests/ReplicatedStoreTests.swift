import Dispatch
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport
import TestSupport
import Testing


/// One message from a store to its peers.
enum Message: Sendable {
    case update(SessionUpdate)
    case record(ReplicatedRecord)

    func merge(into store: ReplicatedSessionStore) {
        switch self {
        case .update(let update): store.merge(update)
        case .record(let record): store.merge(record: record)
        }
    }
}

/// Stores wired in-process, on one manual clock. Each store's outbound
/// messages go to every other connected store: queued until `deliver(seed:)`
/// merges them in a seeded random order with duplicates, or, when `async`,
/// merged at once on the receiver's serial queue (`drain()` waits for them).
final class StoreCluster: Sendable {
    let clock: ManualClock
    let stores: [ReplicatedSessionStore]
    private let queues: [DispatchQueue]?
    private let pending = Mutex<[(to: Int, message: Message)]>([])
    private let receivers: Mutex<Set<Int>>
    /// Every message sent so far, to replay stale ones.
    let sent = Mutex<[Message]>([])

    init(
        count: Int = 3, async: Bool = false, connected: Set<Int>? = nil,
        expiry: SessionExpiry = SessionExpiry(idleTimeoutMillis: 60_000, absoluteTimeoutMillis: nil),
        maxSessions: Int = 1_000_000, maxSessionBytes: Int = 64 * 1024, principalLimit: PrincipalSessionLimit? = nil
    ) {
        let clock = ManualClock()
        self.clock = clock
        stores = (0..<count).map {
            ReplicatedSessionStore(
                node: UInt32($0 + 1), expiry: expiry, clock: clock.clock, maxSessions: maxSessions,
                maxSessionBytes: maxSessionBytes, principalLimit: principalLimit, nodeName: "node-\($0 + 1)")
        }
        queues = async ? (0..<count).map { DispatchQueue(label: "store-\($0)") } : nil
        receivers = Mutex(connected ?? Set(0..<count))
        for i in 0..<count {
            stores[i].onUpdate = { [weak self] updates in
                self?.send(from: i, updates.map(Message.update))
                return true
            }
            stores[i].onRecord = { [weak self] record in
                self?.send(from: i, [.record(record)])
                return true
            }
        }
    }

    /// Lets store `i` receive from now on (it missed everything before).
    func connect(_ i: Int) { _ = receivers.withLock { $0.insert(i) } }

    private func send(from: Int, _ messages: [Message]) {
        sent.withLock { $0 += messages }
        for to in receivers.withLock({ $0 }) where to != from {
            if let queues {
                let store = stores[to]
                queues[to].async { for message in messages { message.merge(into: store) } }
            } else {
                pending.withLock { $0 += messages.map { (to, $0) } }
            }
        }
    }

    /// Merges every queued message, shuffled, about a third of them twice.
    func deliver(seed: UInt64 = 1) {
        var rng = SplitMix64(seed: seed)
        while true {
            var batch = pending.withLock { pending in
                defer { pending = [] }
                return pending
            }
            if batch.isEmpty { return }
            batch += batch.filter { _ in rng.below(3) == 0 }
            batch.shuffle(using: &rng)
            for (to, message) in batch { message.merge(into: stores[to]) }
        }
    }

    /// Waits until every async merge sent so far has run.
    func drain() { queues?.forEach { $0.sync {} } }

    /// A store's full state: every session and tombstone.
    func state(_ i: Int) -> [SessionID: ReplicatedSession] {
        Dictionary(uniqueKeysWithValues: stores[i].snapshot(chunkSize: .max).joined().map { ($0.id, $0.state) })
    }

    /// A store's completed idempotency records, by key.
    func records(_ i: Int) -> [ReplicatedRecord] {
        stores[i].recordSnapshot().sorted { $0.record.key < $1.record.key }
    }

    /// Creates a session on store `i` with these attributes.
    func create(on i: Int, _ attributes: [String: String] = ["user": "\"ada\""]) throws -> SessionID {
        let id = SessionID.generate()
        let changes = attributes.map { SessionChange.set($0.key, json($0.value)) }
        _ = try #require(try stores[i].apply(SessionDelta(id: id, changes: changes, createIfMissing: true)))
        return id
    }

    func set(on i: Int, _ id: SessionID, _ name: String, _ value: String) throws {
        _ = try #require(try stores[i].apply(SessionDelta(id: id, changes: [.set(name, json(value))])))
    }
}

private final class Failures: Sendable {
    let count = Mutex(0)
}

@Suite struct ReplicatedStoreTests {
    @Test func writeOnOneNodeIsReadableOnTheOthers() throws {
        let cluster = StoreCluster()
        let id = try cluster.create(on: 0)
        cluster.deliver()
        let snapshots = try cluster.stores.map { try #require(try $0.load(id)) }
        #expect(snapshots.allSatisfy { $0.attributes == ["user": json("\"ada\"")] })
        #expect(Set(snapshots.map(\.version)).count == 1)
    }

    @Test func concurrentWritesToDifferentAttributesBothSurvive() throws {
        let cluster = StoreCluster()
        let id = try cluster.create(on: 0, ["base": "0"])
        cluster.deliver()
        try cluster.set(on: 0, id, "x", "1")
        try cluster.set(on: 1, id, "y", "2")
        // ...and one attribute written on both: the same winner everywhere.
        try cluster.set(on: 0, id, "z", "\"a\"")
        try cluster.set(on: 1, id, "z", "\"b\"")
        cluster.deliver(seed: 7)
        let loaded = try cluster.stores.map { try #require(try $0.load(id)).attributes }
        #expect(loaded[0]["x"] == json("1") && loaded[0]["y"] == json("2") && loaded[0]["base"] == json("0"))
        #expect(loaded[0]["z"] == json("\"b\""), "node 2's later stamp wins")
        #expect(loaded.allSatisfy { $0 == loaded[0] })
        #expect(cluster.state(0) == cluster.state(1) && cluster.state(1) == cluster.state(2))
    }

    @Test func aConcurrentSetOverwrittenIsCountedASequentialOneIsNot() throws {
        let cluster = StoreCluster(count: 3)
        let id = try cluster.create(on: 0, ["color": "\"grey\""])
        cluster.deliver()
        // Sequential: node 1 has seen node 0's set when it writes its own.
        try cluster.set(on: 0, id, "color", "\"red\"")
        cluster.deliver()
        try cluster.set(on: 1, id, "color", "\"blue\"")
        cluster.deliver()
        #expect(cluster.stores.map(\.concurrentSetsOverwritten) == [0, 0, 0])
        // Concurrent: nodes 0 and 2 set it before either hears of the other's (a partition).
        try cluster.set(on: 0, id, "color", "\"green\"")
        try cluster.set(on: 2, id, "color", "\"white\"")
        cluster.deliver()
        let values = try cluster.stores.map { try $0.load(id)?.attributes["color"] }
        #expect(Set(values).count == 1 && values[0] == json("\"white\""), "the later one everywhere: \(values)")
        // Each node that merged the pair counts it once: node 1 merged both, 0 and 2 the other's.
        #expect(cluster.stores.map(\.concurrentSetsOverwritten) == [1, 1, 1])
        // Delivered again (a resync): counted no more.
        for store in cluster.stores {
            for other in cluster.stores where other !== store { _ = store.merge(other.fullState(of: id)!) }
        }
        #expect(cluster.stores.map(\.concurrentSetsOverwritten) == [1, 1, 1])
    }

    @Test func concurrentIncrementsOnThreeNodesConverge() throws {
        let cluster = StoreCluster(async: true)
        let id = try cluster.create(on: 0, [:])
        cluster.drain()
        let failures = Failures()
        let finished = onThreads(3, seconds: 60) { i in
            for _ in 0..<500 {
                let applied = try? cluster.stores[i].apply(SessionDelta(id: id, changes: [.increment("n", by: 1)]))
                if applied == nil { failures.count.withLock { $0 += 1 } }
            }
        }
        #expect(finished)
        cluster.drain()
        #expect(failures.count.withLock { $0 } == 0)
        for store in cluster.stores {
            #expect(try store.load(id)?.attributes["n"] == json("1500"))
        }
    }

    @Test func invalidateIsFinalEverywhere() throws {
        let cluster = StoreCluster()
        let id = try cluster.create(on: 0)
        cluster.deliver()
        let stale = cluster.sent.withLock { $0 }
        try cluster.stores[0].invalidate(id)
        try cluster.set(on: 1, id, "late", "1")  // a write racing the invalidation, stamped after it
        cluster.deliver(seed: 3)
        for store in cluster.stores {
            #expect(try store.load(id) == nil)
            #expect(try store.apply(SessionDelta(id: id, changes: [.set("a", json("1"))], createIfMissing: true)) == nil)
            for message in stale { message.merge(into: store) }
            #expect(try store.load(id) == nil, "a late older update does not bring it back")
        }
        // The tombstone is swept after the idle timeout; the stale update has expired by then.
        cluster.clock.advance(millis: 60_000)
        for store in cluster.stores {
            #expect(store.sweep() == 1)
            for message in stale { message.merge(into: store) }
            #expect(store.count == 0)
        }
    }

    @Test func regenerateMovesTheDataOnEveryNode() throws {
        let cluster = StoreCluster()
        let old = try cluster.create(on: 0, ["user": "\"ada\"", "n": "3"])
        cluster.deliver()
        let new = SessionID.generate()
        #expect(try cluster.stores[0].regenerate(old, to: new))
        cluster.deliver(seed: 5)
        for store in cluster.stores {
            #expect(try store.load(new)?.attributes == ["user": json("\"ada\""), "n": json("3")])
            #expect(try store.load(old) == nil)
            #expect(try store.apply(SessionDelta(id: old, changes: [.set("x", json("1"))])) == nil)
        }
    }

    @Test func idempotencyRecordsReplicate() throws {
        let cluster = StoreCluster()
        let id = try cluster.create(on: 0)
        #expect(try cluster.stores[0].begin(key: "k1", fingerprint: "fp-k1", inProgressMillis: 10_000) == .claimed)
        let delta = SessionDelta(id: id, changes: [.increment("n", by: 1)], idempotencyRecord: record("k1"))
        _ = try #require(try cluster.stores[0].apply(delta))
        try cluster.stores[0].complete(record("k2"))  // a request that changed no session
        cluster.deliver()
        for store in cluster.stores.dropFirst() {
            for key in ["k1", "k2"] {
                #expect(try store.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .completed(record(key).response))
                #expect(try store.begin(key: key, fingerprint: "other", inProgressMillis: 10_000) == .mismatch)
            }
        }
        // The record message round-trips through its wire form.
        let replicated = cluster.records(0)[1]
        var w = WireWriter()
        replicated.encode(into: &w)
        var r = WireReader(w.bytes)
        #expect(try ReplicatedRecord(from: &r) == replicated)
        try r.expectEnd()
    }

    /// A keyed change claimed on a before a pause of a (SIGSTOP), while the client's retry ran on b:
    /// before its write, a asks the peers again, merges b's record, and refuses the change, so
    /// the middleware replays b's answer. Without the pause the same change is written: the
    /// count then holds both runs (the duplicate the recheck prevents).
    @Test(arguments: [true, false])
    func aClaimOlderThanAPauseIsLookedUpAgainBeforeItsWrite(paused: Bool) throws {
        let cluster = StoreCluster()
        let id = try cluster.create(on: 0)
        cluster.deliver()
        let (a, b) = (cluster.stores[0], cluster.stores[1])
        let delta = SessionDelta(id: id, changes: [.increment("n", by: 1)], idempotencyRecord: record("k"))
        #expect(try a.begin(key: "k", fingerprint: "fp-k", inProgressMillis: 10_000) == .claimed)  // then a froze
        #expect(try b.begin(key: "k", fingerprint: "fp-k", inProgressMillis: 10_000) == .claimed)  // the retry
        _ = try #require(try b.apply(delta))
        // a's lookups reach b, as ReplicationNode's do over the network.
        a.onLookup = { key, request in
            a.mergeLookupReply(KeyLookupReply(key: key, request: request, answer: b.lookUp(key: key)))
            return 1
        }
        a.lastPauseEnded = { paused ? monotonicNanos() : nil }
        if paused {
            #expect(throws: SessionStoreError.idempotencyKeyCompleted("k")) { try a.apply(delta) }
            #expect(try a.begin(key: "k", fingerprint: "fp-k", inProgressMillis: 10_000) == .completed(record("k").response))
            #expect(a.keyLookupCounts.recheckedAfterPause == 1)
        } else {
            _ = try #require(try a.apply(delta))
            #expect(a.keyLookupCounts.recheckedAfterPause == 0)
        }
        cluster.deliver()
        for store in cluster.stores {
            #expect(try store.load(id)?.attributes["n"] == json(paused ? "1" : "2"))
        }
    }

    @Test func stateTransferWhileUpdatesKeepArriving() throws {
        let cluster = StoreCluster(connected: [0, 1])  // store 2 joins late
        var rng = SplitMix64(seed: 42)
        var ids = try (0..<60).map { try cluster.create(on: $0 % 2, ["i": "\($0)"]) }
        try cluster.stores[1].complete(record("before"))
        cluster.deliver()

        cluster.connect(2)
        let chunks = cluster.stores[0].snapshot(chunkSize: 7)
        #expect(chunks.count == 9 && chunks.allSatisfy { $0.count <= 7 })
        let records = cluster.stores[0].recordSnapshot()
        for (n, chunk) in chunks.enumerated() {
            for update in chunk { cluster.stores[2].merge(update) }
            // Meanwhile every node keeps writing.
            let writer = rng.below(3)
            let id = ids[rng.below(ids.count)]
            _ = try cluster.stores[writer].apply(SessionDelta(id: id, changes: [.increment("hits", by: 1)]))
            ids.append(try cluster.create(on: writer))
            if n == 3 {
                try cluster.stores[1].invalidate(ids[0])
                let moved = SessionID.generate()
                #expect(try cluster.stores[0].regenerate(ids[1], to: moved))
                try cluster.stores[2].complete(record("during"))
            }
            cluster.deliver(seed: UInt64(n))
        }
        for record in records { cluster.stores[2].merge(record: record) }

        #expect(cluster.state(2).count == 60 + 9 + 1)
        #expect(cluster.state(0) == cluster.state(2))
        #expect(cluster.state(1) == cluster.state(2))
        #expect(cluster.records(0) == cluster.records(2) && cluster.records(1) == cluster.records(2))
        #expect(cluster.records(2).count == 2)
    }

    /// A rejoin that begins while a write runs (the node noticed, mid-request, that it had been
    /// frozen) refuses that write, even where its sink said it was sent: the node's state is
    /// about to be replaced, and a key it ran may have run on a peer meanwhile. (CI once saw an
    /// async node answer 200 here: its links were reconnecting, so "sent to every connected
    /// peer" was vacuously true.) Each write path: apply, regenerate, invalidate.
    @Test func aRejoinBegunDuringAWriteRefusesThatWrite() throws {
        let store = ReplicatedSessionStore(node: 1, expiry: SessionExpiry(idleTimeoutMillis: 60_000, absoluteTimeoutMillis: nil))
        let reason = "this node is rejoining the cluster: frozen"
        let writes: [(String, (SessionID) throws -> Void)] = [
            ("apply", { _ = try store.apply(SessionDelta(id: $0, changes: [.set("n", json("2"))])) }),
            ("regenerate", { _ = try store.regenerate($0, to: SessionID.generate()) }),
            ("invalidate", { try store.invalidate($0) }),
        ]
        for (name, write) in writes {
            // A live session, written while the node serves throughout: answered.
            store.isReady = true
            store.onUpdate = { _ in true }
            let id = SessionID.generate()
            _ = try #require(try store.apply(SessionDelta(id: id, changes: [.set("n", json("1"))], createIfMissing: true)))
            // The rejoin begins while the write is being sent.
            store.onUpdate = { _ in
                store.stopServing(reason: reason)
                return true  // sent, as far as the sink knows
            }
            #expect(throws: SessionStoreError(.unavailable, reason), "\(name)") { try write(id) }
            store.onUpdate = { _ in
                Issue.record("\(name) ran while the node was not serving")
                return true
            }
            #expect(throws: SessionStoreError(.unavailable, reason), "\(name): the next one is refused before it runs") {
                try write(id)
            }
        }
        // A standalone idempotency record (a keyed request that changed no session): the same.
        store.isReady = true
        store.onRecord = { _ in
            store.stopServing(reason: reason)
            return true
        }
        #expect(throws: SessionStoreError(.unavailable, reason), "complete") { try store.complete(record("k1")) }
        store.onRecord = { _ in
            Issue.record("complete ran while the node was not serving")
            return true
        }
        #expect(throws: SessionStoreError(.unavailable, reason), "complete: refused before it runs") {
            try store.complete(record("k2"))
        }
    }

    @Test func sessionCapRefusesNewSessionsOnlyWhileFull() throws {
        let cluster = StoreCluster(
            count: 2, expiry: SessionExpiry(idleTimeoutMillis: 1000, absoluteTimeoutMillis: nil), maxSessions: 2)
        let a = try cluster.create(on: 0)
        let b = try cluster.create(on: 0)
        let sent = cluster.sent.withLock { $0.count }
        #expect(throws: SessionStoreError(.capacityExceeded, "the store holds 2 sessions")) {
            _ = try cluster.stores[0].apply(SessionDelta(id: SessionID.generate(), changes: [], createIfMissing: true))
        }
        #expect(cluster.sent.withLock { $0.count } == sent, "nothing replicated")
        #expect(try cluster.stores[0].load(a) != nil && cluster.stores[0].load(b) != nil, "live sessions stay")
        cluster.deliver()
        // Once they expire, they make room; merges from a peer ignore the cap.
        cluster.clock.advance(millis: 1000)
        let c = try cluster.create(on: 0)
        #expect(cluster.stores[0].count == 1)
        cluster.deliver()
        #expect(try cluster.stores[1].load(c) != nil)
        #expect(cluster.stores[1].count == 3, "the peer's expired sessions are not swept yet")
    }

    @Test func sessionSizeCapWritesNothing() throws {
        let cluster = StoreCluster(count: 2, maxSessionBytes: 100)
        let id = try cluster.create(on: 0, ["a": "1"])
        cluster.deliver()
        let before = cluster.state(0)
        let sent = cluster.sent.withLock { $0.count }
        let big = "\"" + String(repeating: "x", count: 100) + "\""
        for delta in [
            SessionDelta(id: id, changes: [.set("b", json("2")), .set("big", json(big))]),
            SessionDelta(id: SessionID.generate(), changes: [.set("big", json(big))], createIfMissing: true),
        ] {
            #expect(throws: SessionStoreError.self) { _ = try cluster.stores[0].apply(delta) }
        }
        #expect(cluster.state(0) == before)
        #expect(cluster.sent.withLock { $0.count } == sent, "nothing replicated")
        cluster.deliver()
        #expect(try cluster.stores[1].load(id)?.attributes == ["a": json("1")])
    }
}
