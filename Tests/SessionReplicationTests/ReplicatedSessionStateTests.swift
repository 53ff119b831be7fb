import SessionCore
import SessionReplication
import Synchronization
import SystemSupport
import Testing

// MARK: Helpers

/// A wall clock tests set by hand, backwards included.
private final class TestWall: Sendable {
    private let now: Mutex<Int64>
    init(_ start: Int64 = 1_700_000_000_000) { now = Mutex(start) }
    var millis: Int64 { now.withLock { $0 } }
    func set(_ millis: Int64) { now.withLock { $0 = millis } }
    func advance(_ millis: Int64) { now.withLock { $0 += millis } }
}


private func stamp(_ millis: Int64, _ counter: UInt32 = 0, node: UInt32) -> HLCStamp {
    HLCStamp(millis: millis, counter: counter, node: node)
}

private func randomID(_ rng: inout SplitMix64) -> SessionID {
    SessionID(rawValue: base64URLEncode((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }))!
}

private func merged(_ a: ReplicatedSession, _ b: ReplicatedSession) -> ReplicatedSession {
    var result = a
    result.merge(b)
    return result
}

private func roundTrip(_ update: SessionUpdate) throws -> SessionUpdate {
    var w = WireWriter()
    update.encode(into: &w)
    var r = WireReader(w.bytes)
    let decoded = try SessionUpdate(from: &r)
    try r.expectEnd()
    return decoded
}

/// One node: its clock and every session it holds.
private struct Replica {
    let wall: @Sendable () -> Int64
    let clock: HybridLogicalClock
    var sessions: [SessionID: ReplicatedSession] = [:]

    init(node: UInt32, wall: TestWall, skew: Int64 = 0) {
        let read: @Sendable () -> Int64 = { wall.millis + skew }
        self.wall = read
        clock = HybridLogicalClock(node: node, wallClock: read)
    }

    mutating func receive(_ update: SessionUpdate) {
        clock.observe(update.state.version)
        sessions[update.id, default: update.state].merge(update.state)
    }

    func value(_ id: SessionID, _ name: String) -> Int64? {
        sessions[id]?.attributes[name]?.value.flatMap(decodeCounter)
    }
}

/// Replicas that send every local update to every other one; delivery is
/// random, out of order and sometimes duplicated.
private struct Cluster {
    var replicas: [Replica]
    var inboxes: [[SessionUpdate]]
    /// Every update produced, in order.
    var sent: [SessionUpdate] = []
    var rng: SplitMix64

    init(nodes: Int, wall: TestWall, seed: UInt64, skews: [Int64] = []) {
        replicas = (0..<nodes).map { Replica(node: UInt32($0), wall: wall, skew: $0 < skews.count ? skews[$0] : 0) }
        inboxes = Array(repeating: [], count: nodes)
        rng = SplitMix64(seed: seed)
    }

    mutating func broadcast(_ update: SessionUpdate, from origin: Int) {
        sent.append(update)
        for q in replicas.indices where q != origin {
            inboxes[q].append(update)
            if Int.random(in: 0..<10, using: &rng) == 0 { inboxes[q].append(update) }
        }
    }

    /// One random pending update to `q`; sometimes it stays pending, to arrive again later.
    mutating func deliverOne(to q: Int) {
        guard !inboxes[q].isEmpty else { return }
        let i = Int.random(in: inboxes[q].indices, using: &rng)
        let update = Int.random(in: 0..<10, using: &rng) == 0 ? inboxes[q][i] : inboxes[q].remove(at: i)
        replicas[q].receive(update)
    }

    /// Everything pending for `q`, shuffled, some of it twice.
    mutating func deliverAll(to q: Int) {
        var pending = inboxes[q]
        for update in inboxes[q] where Bool.random(using: &rng) { pending.append(update) }
        pending.shuffle(using: &rng)
        for update in pending { replicas[q].receive(update) }
        inboxes[q] = []
    }

    mutating func deliverAll() {
        for q in replicas.indices { deliverAll(to: q) }
    }

    mutating func create(on r: Int, _ id: SessionID) {
        let session = ReplicatedSession(createdAtMillis: replicas[r].wall(), at: replicas[r].clock.now())
        replicas[r].sessions[id] = session
        broadcast(SessionUpdate(id: id, session: session), from: r)
    }

    /// A local write on `r`, as a store does it; nil when refused (unknown or
    /// invalidated session, type mismatch). Returns the incremented values.
    @discardableResult
    mutating func write(on r: Int, _ id: SessionID, _ changes: [SessionChange]) -> [String: Int64]? {
        guard var session = replicas[r].sessions[id], !session.isInvalidated else { return nil }
        let delta = SessionDelta(id: id, changes: changes)
        guard let (update, counters) = try? session.apply(delta, clock: replicas[r].clock, nowMillis: replicas[r].wall())
        else { return nil }
        replicas[r].sessions[id] = session
        broadcast(update, from: r)
        return counters
    }

    mutating func invalidate(on r: Int, _ id: SessionID) {
        guard var session = replicas[r].sessions[id] else { return }
        session.invalidate(at: replicas[r].clock.now())
        replicas[r].sessions[id] = session
        broadcast(SessionUpdate(id: id, session: session), from: r)
    }

    mutating func regenerate(on r: Int, _ id: SessionID, to newID: SessionID) {
        guard var session = replicas[r].sessions[id], !session.isInvalidated else { return }
        let (moved, updates) = session.regenerate(
            from: id, to: newID, at: replicas[r].clock.now(), nowMillis: replicas[r].wall())
        replicas[r].sessions[id] = session
        replicas[r].sessions[newID] = moved
        for update in updates { broadcast(update, from: r) }
    }

    mutating func touch(on r: Int, _ id: SessionID) {
        guard var session = replicas[r].sessions[id], !session.isInvalidated else { return }
        session.touch(nowMillis: replicas[r].wall())
        replicas[r].sessions[id] = session
        broadcast(SessionUpdate(id: id, session: session, attributes: [:]), from: r)
    }

    /// Every sent update merged, in `order`, into empty replicas.
    func fold(_ order: [SessionUpdate]) -> [SessionID: ReplicatedSession] {
        var result: [SessionID: ReplicatedSession] = [:]
        for update in order { result[update.id, default: update.state].merge(update.state) }
        return result
    }
}

// MARK: Tests

@Suite struct ReplicatedSessionStateTests {
    // (1)
    @Test func clockIncreasesStrictlyUnderStuckAndBackwardsWallClock() {
        let wall = TestWall(5_000)
        let clock = HybridLogicalClock(node: 3, wallClock: { wall.millis })
        var last = clock.now()
        #expect(last == stamp(5_000, 0, node: 3))
        for _ in 0..<1_000 {  // stuck
            let next = clock.now()
            #expect(next > last)
            last = next
        }
        wall.set(1_000)  // backwards
        for _ in 0..<1_000 {
            let next = clock.now()
            #expect(next > last)
            #expect(next.millis == 5_000)
            last = next
        }
        wall.set(6_000)
        #expect(clock.now() == stamp(6_000, 0, node: 3))
    }

    @Test func clockMovesPastObservedStamps() {
        let wall = TestWall(10_000)
        let clock = HybridLogicalClock(node: 1, wallClock: { wall.millis })
        let remote = stamp(10_500, 7, node: 9)  // a peer slightly ahead, with a larger node id
        #expect(clock.observe(remote))
        let next = clock.now()
        #expect(next > remote)
        #expect(next == stamp(10_500, 8, node: 1))
        #expect(clock.observe(stamp(2_000, 0, node: 2)))  // an old stamp changes nothing
        #expect(clock.now() == stamp(10_500, 9, node: 1))
        // The counter wraps into the next millisecond.
        #expect(clock.observe(stamp(10_600, .max, node: 2)))
        #expect(clock.now() == stamp(10_601, 0, node: 1))
        // A stamp far in the future is refused and does not drag the clock along.
        #expect(!clock.observe(stamp(10_000 + 3_600_000, 0, node: 2)))
        #expect(!clock.observe(stamp(.max, .max, node: 2)))
        #expect(clock.now() == stamp(10_601, 1, node: 1))
    }

    @Test func clockStampsAreUniqueAcrossThreads() async {
        let wall = TestWall(1)
        let clock = HybridLogicalClock(node: 1, wallClock: { wall.millis })
        let all = await withTaskGroup(of: [HLCStamp].self) { group in
            for _ in 0..<8 { group.addTask { (0..<5_000).map { _ in clock.now() } } }
            var all: [HLCStamp] = []
            for await stamps in group {
                #expect(stamps == stamps.sorted())
                all += stamps
            }
            return all
        }
        #expect(Set(all).count == 40_000)
    }

    // (2)
    @Test func lastWriterWinsPerAttributeWithNodeTieBreak() {
        let start = ReplicatedSession(createdAtMillis: 1_000, at: stamp(1_000, node: 1))
        var a = start
        var b = start
        _ = a.set("x", json("\"a\""), at: stamp(2_000, 0, node: 1))
        _ = b.set("x", json("\"b\""), at: stamp(2_000, 0, node: 2))  // same time: node 2 wins
        let ab = merged(a, b)
        #expect(ab == merged(b, a))
        #expect(ab.attributes["x"]?.value == json("\"b\""))
        #expect(merged(ab, a) == ab, "an older update changes nothing")
        #expect(merged(ab, ab) == ab)

        // A remove wins only over older writes.
        var olderRemove = start
        _ = olderRemove.remove("x", at: stamp(1_999, 5, node: 3))
        // (It changes no attribute; the merged copy does record that it holds node 3's write.)
        #expect(merged(ab, olderRemove).attributes == ab.attributes)
        #expect(merged(olderRemove, ab) == merged(ab, olderRemove))
        #expect(merged(ab, olderRemove).seen[3] == stamp(1_999, 5, node: 3))
        var newerRemove = start
        _ = newerRemove.remove("x", at: stamp(2_000, 1, node: 1))
        let removed = merged(ab, newerRemove)
        #expect(removed == merged(newerRemove, ab))
        #expect(removed.attributes["x"]?.value == nil)
        #expect(removed.snapshot(id: SessionID.generate())?.attributes == [:])
        // ... and a later set wins over the remove.
        var later = start
        _ = later.set("x", json("3"), at: stamp(2_001, 0, node: 2))
        #expect(merged(removed, later).attributes["x"]?.value == json("3"))
        #expect(merged(later, removed).attributes["x"]?.value == json("3"))
        #expect(merged(removed, later).version == stamp(2_001, 0, node: 2))
    }

    // (3)
    @Test func concurrentIncrementsAreNeverLostNorCountedTwice() throws {
        let wall = TestWall()
        var cluster = Cluster(nodes: 3, wall: wall, seed: 3)
        let id = randomID(&cluster.rng)
        cluster.create(on: 0, id)
        cluster.deliverAll()
        var left = [500, 500, 500]
        var expectedM: Int64 = 0
        while left.contains(where: { $0 > 0 }) {
            let r = left.indices.filter { left[$0] > 0 }.randomElement(using: &cluster.rng)!
            left[r] -= 1
            let amount = Int64.random(in: -1_000...1_000, using: &cluster.rng)  // negative ones too
            expectedM += amount
            let written = cluster.write(on: r, id, [.increment("n", by: 1), .increment("m", by: amount)])
            let counters = try #require(written)
            #expect(counters["n"] == cluster.replicas[r].value(id, "n"))
            if Bool.random(using: &cluster.rng) { cluster.deliverOne(to: Int.random(in: 0..<3, using: &cluster.rng)) }
            if Int.random(in: 0..<20, using: &cluster.rng) == 0 { wall.advance(1) }
        }
        cluster.deliverAll()
        for replica in cluster.replicas {
            #expect(replica.value(id, "n") == 1_500)
            #expect(replica.value(id, "m") == expectedM)
            #expect(replica.sessions == cluster.replicas[0].sessions)
        }
        // Every update once more, in any order: nothing changes.
        let before = cluster.replicas[1].sessions
        for update in cluster.sent.shuffled(using: &cluster.rng) { cluster.replicas[1].receive(update) }
        #expect(cluster.replicas[1].sessions == before)
    }

    // (4)
    @Test func setStartsANewEpochThatDiscardsOlderCounts() throws {
        let wall = TestWall()
        var cluster = Cluster(nodes: 3, wall: wall, seed: 4)
        let id = randomID(&cluster.rng)
        cluster.create(on: 0, id)
        cluster.deliverAll()
        for _ in 0..<3 { cluster.write(on: 0, id, [.increment("n", by: 1)]) }
        for _ in 0..<4 { cluster.write(on: 1, id, [.increment("n", by: 1)]) }
        cluster.deliverAll()
        #expect(cluster.replicas.allSatisfy { $0.value(id, "n") == 7 })

        wall.advance(5)
        cluster.write(on: 0, id, [.set("n", json("100"))])
        let epoch = try #require(cluster.replicas[0].sessions[id]?.attributes["n"]?.epoch)
        // Node 1 has not seen the set yet: its increments land in the old epoch.
        for _ in 0..<2 { cluster.write(on: 1, id, [.increment("n", by: 1)]) }
        #expect(cluster.replicas[1].value(id, "n") == 9)
        cluster.deliverAll(to: 1)
        #expect(cluster.replicas[1].value(id, "n") == 100, "the set discards the older epoch's counts")

        for _ in 0..<5 { cluster.write(on: 1, id, [.increment("n", by: 1)]) }
        for _ in 0..<2 { cluster.write(on: 0, id, [.increment("n", by: 1)]) }
        cluster.deliverAll()
        for replica in cluster.replicas {
            let n = try #require(replica.sessions[id]?.attributes["n"])
            #expect(n.value == json("107"))
            #expect(n.epoch == epoch)
            #expect(n.base == json("100"))
            #expect(n.counts.mapValues(\.sum) == [0: 2, 1: 5])
        }
    }

    // (5)
    @Test(arguments: [UInt64(5), 55, 555])
    func randomOperationsConverge(seed: UInt64) throws {
        let wall = TestWall()
        var cluster = Cluster(nodes: 3, wall: wall, seed: seed, skews: [0, 40, -40])
        let names = ["a", "b", "n"]
        var applied = 0
        for i in 0..<4 {
            cluster.create(on: i % 3, randomID(&cluster.rng))
        }
        for _ in 0..<3_000 {
            let r = Int.random(in: 0..<3, using: &cluster.rng)
            let live = cluster.replicas[r].sessions.filter { !$0.value.isInvalidated }.keys.sorted { $0.rawValue < $1.rawValue }
            let roll = Int.random(in: 0..<1_000, using: &cluster.rng)
            if live.isEmpty || roll < 10 {
                cluster.create(on: r, randomID(&cluster.rng))
                continue
            }
            let id = live.randomElement(using: &cluster.rng)!
            let name = names.randomElement(using: &cluster.rng)!
            switch roll {
            case ..<15: cluster.invalidate(on: r, id)
            case ..<20: cluster.regenerate(on: r, id, to: randomID(&cluster.rng))
            case ..<60: cluster.touch(on: r, id)
            case ..<400:
                let value = Bool.random(using: &cluster.rng) ? "\(Int.random(in: -50...50, using: &cluster.rng))" : "\"s\""
                if cluster.write(on: r, id, [.set(name, json(value))]) != nil { applied += 1 }
            case ..<550:
                if cluster.write(on: r, id, [.remove(name)]) != nil { applied += 1 }
            default:
                let amount = Int64.random(in: -5...5, using: &cluster.rng)
                if cluster.write(on: r, id, [.increment(name, by: amount)]) != nil { applied += 1 }
            }
            for _ in 0..<Int.random(in: 0...3, using: &cluster.rng) {
                cluster.deliverOne(to: Int.random(in: 0..<3, using: &cluster.rng))
            }
            wall.advance(Int64.random(in: 0...2, using: &cluster.rng))
        }
        cluster.deliverAll()

        #expect(applied > 1_500)
        let reference = cluster.replicas[0].sessions
        #expect(reference.values.contains { $0.isInvalidated })
        #expect(reference.values.contains { !$0.attributes.isEmpty })
        for replica in cluster.replicas {
            #expect(replica.sessions == reference)
            for (id, session) in replica.sessions {
                #expect(session.snapshot(id: id) == reference[id]?.snapshot(id: id))
            }
        }
        // The converged state is the join of all updates, whatever their order.
        #expect(cluster.fold(cluster.sent) == reference)
        #expect(cluster.fold(cluster.sent.reversed()) == reference)
    }

    // (6)
    @Test func updatesRoundTripOnTheWire() throws {
        var rng = SplitMix64(seed: 6)
        for _ in 0..<500 {
            let update = randomUpdate(&rng)
            #expect(try roundTrip(update) == update)
        }
    }

    @Test func mutatedEncodingsDecodeToAnErrorOrAValidUpdate() throws {
        var rng = SplitMix64(seed: 66)
        let encodings = (0..<200).map { _ in
            var w = WireWriter()
            randomUpdate(&rng).encode(into: &w)
            return w.bytes
        }
        var rejected = 0
        var accepted = 0
        for _ in 0..<12_000 {
            var bytes = encodings.randomElement(using: &rng)!
            switch Int.random(in: 0..<5, using: &rng) {
            case 0:
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    bytes[Int.random(in: bytes.indices, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            case 1:
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 2:
                let at = Int.random(in: 0...(bytes.count - 4), using: &rng)
                let big: [UInt8] = [[0xFF, 0xFF, 0xFF, 0xFF], [0x7F, 0xFF, 0xFF, 0xFF], [0, 0, 1, 1], [0, 0x10, 0, 1]]
                    .randomElement(using: &rng)!
                bytes.replaceSubrange(at..<at + 4, with: big)
            case 3:
                let extra = (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                bytes.insert(contentsOf: extra, at: Int.random(in: 0...bytes.count, using: &rng))
            default:
                let from = Int.random(in: bytes.indices, using: &rng)
                bytes.removeSubrange(from..<min(bytes.count, from + Int.random(in: 1...16, using: &rng)))
            }
            var r = WireReader(bytes)
            do {
                let decoded = try SessionUpdate(from: &r)
                accepted += 1
                #expect(try roundTrip(decoded) == decoded)
            } catch {
                rejected += 1
            }
        }
        #expect(rejected > 5_000)
        #expect(accepted > 0)
    }

    @Test func decoderEnforcesLimits() throws {
        let id = SessionID.generate()
        func encoded(_ session: ReplicatedSession) -> [UInt8] {
            var w = WireWriter()
            SessionUpdate(id: id, session: session).encode(into: &w)
            return w.bytes
        }
        func decodes(_ bytes: [UInt8]) -> Bool {
            var r = WireReader(bytes)
            return (try? SessionUpdate(from: &r)) != nil
        }
        let start = ReplicatedSession(createdAtMillis: 1, at: stamp(1, node: 0))

        var longName = start
        _ = longName.set(String(repeating: "n", count: 1_025), json("1"), at: stamp(2, node: 0))
        #expect(!decodes(encoded(longName)))
        var bigValue = start
        _ = bigValue.set("v", [UInt8](repeating: 0x31, count: (1 << 20) + 1), at: stamp(2, node: 0))
        #expect(!decodes(encoded(bigValue)))
        var manyNodes = start
        for node in 0...256 { _ = try manyNodes.increment("n", by: 1, at: stamp(2, node: UInt32(node))) }
        #expect(!decodes(encoded(manyNodes)))
        var fewerNodes = start
        for node in 0..<256 { _ = try fewerNodes.increment("n", by: 1, at: stamp(2, node: UInt32(node))) }
        #expect(decodes(encoded(fewerNodes)))

        var ok = start
        _ = ok.set("v", json("1"), at: stamp(2, node: 0))
        #expect(decodes(encoded(ok)))
        // Updates written field by field in the order `SessionUpdate.encode(into:)` writes them (no
        // byte offsets): one attribute "v" set at `attributeStamp`, the session at `version`.
        func update(id: String, version: HLCStamp, attributeStamp: HLCStamp) -> [UInt8] {
            var w = WireWriter()
            w.string(id)
            w.i64(1)  // created
            w.i64(1)  // last access
            version.encode(into: &w)
            w.bool(false)  // not invalidated
            w.u32(1)
            w.string("v")
            w.bool(true)
            w.data(json("1"))
            attributeStamp.encode(into: &w)  // epoch
            attributeStamp.encode(into: &w)  // overwrote
            w.u32(0)  // no counts
            w.u32(0)  // nothing seen
            w.bool(false)  // no record
            return w.bytes
        }
        #expect(decodes(update(id: id.rawValue, version: stamp(2, node: 0), attributeStamp: stamp(2, node: 0))))
        #expect(!decodes(update(id: "!" + id.rawValue.dropFirst(), version: stamp(2, node: 0), attributeStamp: stamp(2, node: 0))))
        // A version older than the attribute it holds.
        #expect(!decodes(update(id: id.rawValue, version: stamp(0, node: 0), attributeStamp: stamp(2, node: 0))))
    }

    // (7)
    @Test func invalidationIsFinalAndOnlyForItsOwnID() throws {
        let wall = TestWall()
        var cluster = Cluster(nodes: 3, wall: wall, seed: 7)
        let id = randomID(&cluster.rng)
        cluster.create(on: 0, id)
        cluster.write(on: 0, id, [.set("user", json("\"ada\""))])
        cluster.deliverAll()

        cluster.write(on: 1, id, [.set("cart", json("1"))])  // older than the invalidation
        let late = try #require(cluster.sent.last)
        wall.advance(1)
        cluster.invalidate(on: 0, id)
        let tombstone = try #require(cluster.sent.last)
        let invalidatedAt = try #require(tombstone.state.invalidated)
        #expect(late.state.version < invalidatedAt)
        // Node 1 has not seen the invalidation: its next write is stamped after it.
        wall.advance(1)
        cluster.write(on: 1, id, [.increment("n", by: 1)])
        let newer = try #require(cluster.sent.last)
        #expect(newer.state.version > invalidatedAt)

        // A different, new session is unaffected.
        let other = randomID(&cluster.rng)
        cluster.create(on: 0, other)
        cluster.write(on: 0, other, [.set("user", json("\"bob\""))])

        cluster.deliverAll()
        for replica in cluster.replicas {
            let session = try #require(replica.sessions[id])
            #expect(session.invalidated == invalidatedAt)
            #expect(session.attributes.isEmpty)
            #expect(session.snapshot(id: id) == nil)
            #expect(replica.sessions[other]?.snapshot(id: other)?.attributes == ["user": json("\"bob\"")])
        }
        // Whatever the order: the late delta before or after the tombstone.
        var fresh = Replica(node: 9, wall: wall)
        for update in [late, newer, tombstone, late] { fresh.receive(update) }
        #expect(fresh.sessions[id] == cluster.replicas[0].sessions[id])
        // A write refused locally once the invalidation arrived.
        #expect(cluster.write(on: 1, id, [.set("x", json("1"))]) == nil)
    }

    @Test func regeneratedIDCarriesTheDataAndKillsTheOldOne() throws {
        let wall = TestWall()
        var cluster = Cluster(nodes: 3, wall: wall, seed: 8)
        let old = randomID(&cluster.rng)
        let new = randomID(&cluster.rng)
        cluster.create(on: 0, old)
        cluster.write(on: 0, old, [.set("user", json("\"ada\"")), .increment("n", by: 2)])
        cluster.deliverAll()
        wall.advance(1)
        cluster.write(on: 1, old, [.increment("n", by: 1)])  // concurrent with the regeneration: lost
        cluster.regenerate(on: 0, old, to: new)
        cluster.write(on: 0, new, [.increment("n", by: 10)])
        cluster.deliverAll()
        for replica in cluster.replicas {
            #expect(replica.sessions[old]?.snapshot(id: old) == nil)
            let moved = try #require(replica.sessions[new]?.snapshot(id: new))
            #expect(moved.attributes == ["user": json("\"ada\""), "n": json("12")])
            #expect(moved.createdAtMillis == cluster.replicas[0].sessions[old]?.createdAtMillis)
            #expect(replica.sessions == cluster.replicas[0].sessions)
        }
    }

    @Test func localWriteIsAllOrNothing() throws {
        let clock = HybridLogicalClock(node: 1, wallClock: { 1_000 })
        var session = ReplicatedSession(createdAtMillis: 1_000, at: clock.now())
        let id = SessionID.generate()
        _ = try session.apply(SessionDelta(id: id, changes: [.set("s", json("\"text\""))]), clock: clock, nowMillis: 1_000)
        let before = session
        #expect(throws: SessionStoreError.self) {
            try session.apply(
                SessionDelta(id: id, changes: [.set("a", json("1")), .increment("s", by: 1)]), clock: clock, nowMillis: 2_000)
        }
        // Names and values peers would refuse are refused locally.
        #expect(throws: SessionStoreError.self) {
            try session.apply(
                SessionDelta(id: id, changes: [.set(String(repeating: "n", count: 1_025), json("1"))]), clock: clock,
                nowMillis: 2_000)
        }
        #expect(throws: SessionStoreError.self) {
            try session.apply(
                SessionDelta(id: id, changes: [.set("big", [UInt8](repeating: 0x31, count: (1 << 20) + 1))]),
                clock: clock, nowMillis: 2_000)
        }
        #expect(session == before)
        let (update, counters) = try session.apply(
            SessionDelta(id: id, changes: [.set("a", json("5")), .increment("a", by: 2)]), clock: clock, nowMillis: 2_000)
        #expect(counters == ["a": 7])
        #expect(update.state.attributes.keys.sorted() == ["a"], "only the changed attribute travels")
        #expect(update.state.lastAccessMillis == 2_000)
        #expect(session.snapshot(id: id)?.attributes == ["s": json("\"text\""), "a": json("7")])
        #expect(session.snapshot(id: id)?.version == session.version.packedVersion)
    }
}

// MARK: Random updates

private func randomString(_ rng: inout SplitMix64, maxLength: Int = 8) -> String {
    let pieces = ["a", "b", "z", "é", "🚀", "\u{0}", " ", "\""]
    return (0..<Int.random(in: 0...maxLength, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
}

private func randomUpdate(_ rng: inout SplitMix64) -> SessionUpdate {
    var millis = Int64.random(in: 0...2_000_000_000_000, using: &rng)
    func next(_ rng: inout SplitMix64) -> HLCStamp {
        millis += Int64.random(in: 0...3, using: &rng)
        return HLCStamp(
            millis: millis, counter: UInt32.random(in: 0...UInt32.max, using: &rng),
            node: UInt32.random(in: 0...5, using: &rng))
    }
    var session = ReplicatedSession(createdAtMillis: millis, at: next(&rng))
    let names = (0..<4).map { _ in randomString(&rng) }
    for _ in 0..<Int.random(in: 0...10, using: &rng) {
        let name = names.randomElement(using: &rng)!
        switch Int.random(in: 0..<4, using: &rng) {
        case 0:
            let bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = session.set(name, bytes, at: next(&rng))
        case 1: _ = session.set(name, json("\(Int.random(in: -9...9, using: &rng))"), at: next(&rng))
        case 2: _ = session.remove(name, at: next(&rng))
        default: _ = try? session.increment(name, by: .random(in: -9...9, using: &rng), at: next(&rng))
        }
    }
    if Int.random(in: 0..<3, using: &rng) == 0 { session.touch(nowMillis: millis + 5) }
    if Int.random(in: 0..<8, using: &rng) == 0 { session.invalidate(at: next(&rng)) }
    let subset = Bool.random(using: &rng) ? session.attributes.filter { _ in Bool.random(using: &rng) } : nil
    let record =
        Bool.random(using: &rng)
        ? IdempotencyRecord(
            key: randomString(&rng), fingerprint: randomString(&rng),
            response: StoredResponse(
                status: Int.random(in: 100...599, using: &rng),
                headers: (0..<Int.random(in: 0...3, using: &rng)).map { _ in [randomString(&rng), randomString(&rng)] },
                body: (0..<Int.random(in: 0...30, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }),
            ttlMillis: .random(in: 0...86_400_000, using: &rng))
        : nil
    return SessionUpdate(id: randomID(&rng), session: session, attributes: subset, idempotencyRecord: record)
}
