import Dispatch
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport
import Testing

/// Sessions by principal across replicated stores: every node lists the same sessions, and
/// logins on several nodes at once settle on exactly the limit everywhere.
@Suite struct ReplicatedPrincipalTests {
    func logIn(_ store: ReplicatedSessionStore, as principal: String, from id: SessionID? = nil) throws -> SessionID {
        let newID = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: principal))
        _ = try store.changePrincipal(PrincipalChange(id: id, newID: newID, principal: principal, client: "jar"))
        return newID
    }

    func listed(_ cluster: StoreCluster, _ principal: String) throws -> [Set<SessionID>] {
        try cluster.stores.map { Set(try $0.sessions(ofPrincipal: principal).map(\.id)) }
    }

    @Test func threeLoginsOnThreeNodesAreListedAlikeEverywhereAndRevokeOthersEndsThemEverywhere() throws {
        let cluster = StoreCluster()
        let ids = try (0..<3).map { try logIn(cluster.stores[$0], as: "ada") }
        cluster.deliver()
        #expect(try listed(cluster, "ada") == Array(repeating: Set(ids), count: 3))
        let nodes = try cluster.stores[0].sessions(ofPrincipal: "ada").map(\.node)
        #expect(Set(nodes.compactMap { $0 }) == ["node-1", "node-2", "node-3"], "each session names the node that wrote it")
        #expect(try cluster.stores[1].invalidateSessions(ofPrincipal: "ada", except: ids[1]) == 2)
        cluster.deliver()
        #expect(try listed(cluster, "ada") == Array(repeating: [ids[1]], count: 3))
        for store in cluster.stores {
            #expect(try store.load(ids[0]) == nil)
            #expect(try store.load(ids[2]) == nil)
            #expect(try store.load(ids[1]) != nil)
        }
    }

    @Test func aSequentialLoginOverTheLimitEvictsTheSameSessionEverywhere() throws {
        let cluster = StoreCluster(principalLimit: PrincipalSessionLimit(maxSessions: 2))
        let first = try logIn(cluster.stores[0], as: "ada")
        cluster.clock.advance(millis: 10)
        let second = try logIn(cluster.stores[1], as: "ada")
        cluster.deliver()
        cluster.clock.advance(millis: 10)
        _ = try cluster.stores[2].apply(SessionDelta(id: first, changes: [.increment("n", by: 1)]))  // first used last
        cluster.deliver()
        cluster.clock.advance(millis: 10)
        let third = try logIn(cluster.stores[2], as: "ada")
        cluster.deliver(seed: 7)
        #expect(try listed(cluster, "ada") == Array(repeating: [first, third], count: 3))
        for store in cluster.stores { #expect(try store.load(second) == nil) }
    }

    /// Logins on every node before any of them has heard of the others (the worst case), merged
    /// in many shuffled, duplicated orders: every node keeps the same `limit` newest logins.
    @Test(arguments: Array(1...40) as [UInt64])
    func concurrentLoginsSettleOnExactlyTheLimitOnEveryNode(seed: UInt64) throws {
        let cluster = StoreCluster(principalLimit: PrincipalSessionLimit(maxSessions: 3))
        let heard = cluster.stores.map { _ in ReplicatedExpiryEventTests.Heard() }
        for (i, store) in cluster.stores.enumerated() {
            store.events.current = heard[i]
            store.liveMembers = { [1, 2, 3] }
        }
        var rng = SplitMix64(seed: seed)
        var logins: [SessionID] = []
        for _ in 0..<8 {
            logins.append(try logIn(cluster.stores[Int(rng.below(3))], as: "ada"))
            if rng.below(2) == 0 { cluster.deliver(seed: rng.next()) }  // some nodes hear of some logins
        }
        cluster.deliver(seed: seed)
        let lists = try listed(cluster, "ada")
        #expect(lists[0].count == 3, "\(lists.map(\.count))")
        #expect(lists.allSatisfy { $0 == lists[0] }, "every node keeps the same sessions")
        for store in cluster.stores {
            for id in logins where !lists[0].contains(id) { #expect(try store.load(id) == nil) }
        }
        // The sessions over the limit are ended by their owners once settled: 5 evictions in all.
        for _ in 0..<2 {
            cluster.clock.advance(millis: ReplicatedSessionStore.overLimitSettleMillis)
            for store in cluster.stores { store.sweep() }
        }
        cluster.deliver(seed: seed &+ 1)
        let evicted = heard.flatMap { $0.events.withLock { $0.filter { $0.kind == .evicted } } }.map(\.handle)
        #expect(evicted.count == 5 && Set(evicted).count == 5, "\(evicted.count) evictions reported")
        #expect(try listed(cluster, "ada") == lists, "the same 3 sessions stay")
    }

    @Test func eightThreadsOnThreeNodesUnderALimitOfThreeLeaveThreeEverywhere() throws {
        let cluster = StoreCluster(async: true, principalLimit: PrincipalSessionLimit(maxSessions: 3))
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            do { _ = try logIn(cluster.stores[i % 3], as: "ada") } catch { failures.withLock { $0.append("\(error)") } }
        }
        cluster.drain()
        #expect(failures.withLock { $0 }.isEmpty)
        let lists = try listed(cluster, "ada")
        #expect(lists.map(\.count) == [3, 3, 3])
        #expect(lists.allSatisfy { $0 == lists[0] })
    }

    @Test func aRefusedLoginChangesNothingOnAnyNode() throws {
        let cluster = StoreCluster(principalLimit: PrincipalSessionLimit(maxSessions: 2, whenExceeded: .refuseNewLogin))
        let held = [try logIn(cluster.stores[0], as: "ada"), try logIn(cluster.stores[1], as: "ada")]
        cluster.deliver()
        let error = #expect(throws: SessionStoreError.self) { _ = try logIn(cluster.stores[2], as: "ada") }
        #expect(error?.code == .principalLimitReached)
        cluster.deliver()
        #expect(try listed(cluster, "ada") == Array(repeating: Set(held), count: 3))
    }
}

/// Expiry events of replicated stores: each node reports only the sessions it owns among the live
/// members, so every expiry is reported once across the cluster.
@Suite struct ReplicatedExpiryEventTests {
    final class Heard: SessionEventListener {
        let events = Mutex<[SessionEvent]>([])
        func sessionEvent(_ event: SessionEvent) { events.withLock { $0.append(event) } }
        var expired: [SessionEvent] { events.withLock { $0.filter { $0.kind == .expired } } }
    }

    @Test func aThousandExpiriesOfTenUsersAreEachReportedOnceAcrossThreeNodes() throws {
        let cluster = StoreCluster(expiry: SessionExpiry(idleTimeoutMillis: 10_000, absoluteTimeoutMillis: nil))
        let heard = cluster.stores.map { _ in Heard() }
        for (i, store) in cluster.stores.enumerated() {
            store.events.current = heard[i]
            store.liveMembers = { [1, 2, 3] }
        }
        for i in 0..<1_000 {
            let user = "user-\(i % 10)"
            _ = try cluster.stores[i % 3].changePrincipal(
                PrincipalChange(id: nil, newID: SessionID.generate(slotTag: SessionPrincipal.slotTag(of: user)), principal: user))
        }
        cluster.deliver()
        cluster.clock.advance(millis: 10_001)
        for store in cluster.stores { store.sweep() }
        for store in cluster.stores { store.sweep() }  // a second sweep reports nothing new
        let handles = heard.flatMap { $0.expired.map(\.handle) }
        #expect(handles.count == 1_000, "\(heard.map { $0.expired.count })")
        #expect(Set(handles).count == 1_000)
        #expect(heard.allSatisfy { $0.expired.count > 200 }, "the nodes share the work: \(heard.map { $0.expired.count })")
        for store in cluster.stores {
            for user in 0..<10 { #expect(try store.sessions(ofPrincipal: "user-\(user)").isEmpty) }
        }
    }
}
