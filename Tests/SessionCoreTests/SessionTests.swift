import SessionCore
import Testing

@Suite struct SessionTests {
    let clock = ManualClock()
    var store: MemorySessionStore { MemorySessionStore(expiry: SessionExpiry(idleTimeoutMillis: 10_000), clock: clock.clock) }

    @Test func readingCreatesNothing() throws {
        let store = self.store
        let session = Session(store: store, snapshot: nil)
        #expect(try session.get("count", as: Int.self) == nil)
        #expect(try session.commit() == .none)
        #expect(session.id == nil)
        #expect(store.count == 0)
    }

    @Test func firstWriteCreatesASessionAndIssuesACookie() throws {
        let store = self.store
        let session = Session(store: store, snapshot: nil)
        try session.set("user", "ada")
        let action = try session.commit()
        let id = try #require(session.id)
        #expect(action == .set(id))
        let stored = try #require(try store.load(id))
        #expect(stored.attributes["user"] == Array("\"ada\"".utf8))
    }

    @Test func onlyChangedAttributesAreWritten() throws {
        let store = self.store
        let id = SessionID.generate()
        _ = try store.apply(SessionDelta(id: id, changes: [.set("a", Array("1".utf8)), .set("b", Array("2".utf8))], createIfMissing: true))
        // Request 1 loads, request 2 changes b meanwhile, request 1 writes a: b must survive.
        let session = Session(store: store, snapshot: try store.load(id))
        _ = try store.apply(SessionDelta(id: id, changes: [.set("b", Array("20".utf8))]))
        try session.set("a", 10)
        #expect(try session.commit() == .none, "an existing session keeps its cookie")
        let stored = try #require(try store.load(id))
        #expect(stored.attributes == ["a": Array("10".utf8), "b": Array("20".utf8)])
    }

    @Test func laterWritesToOneAttributeWin() throws {
        let store = self.store
        let session = Session(store: store, snapshot: nil)
        try session.set("x", 1)
        session.remove("x")
        try session.set("x", 3)
        try session.set("y", "kept")
        _ = try session.commit()
        let id = try #require(session.id)
        let stored = try #require(try store.load(id))
        #expect(stored.attributes == ["x": Array("3".utf8), "y": Array("\"kept\"".utf8)])
    }

    @Test func incrementGoesToTheStoreAtOnce() throws {
        let store = self.store
        let session = Session(store: store, snapshot: nil)
        #expect(try session.increment("count") == 1)
        let id = try #require(session.id)
        #expect(try store.load(id)?.attributes["count"] == Array("1".utf8), "visible before commit")
        #expect(try session.increment("count", by: 5) == 6)
        #expect(try session.get("count", as: Int.self) == 6)
        #expect(try session.commit() == .set(id))
    }

    @Test func regenerateMovesDataToANewID() throws {
        let store = self.store
        let first = Session(store: store, snapshot: nil)
        try first.set("cart", [1, 2, 3])
        _ = try first.commit()
        let oldID = try #require(first.id)

        let login = Session(store: store, snapshot: try store.load(oldID))
        try login.regenerateID()
        try login.set("user", "ada")
        let action = try login.commit()
        let newID = try #require(login.id)
        #expect(newID != oldID)
        #expect(newID.slotTag == oldID.slotTag, "one slot in a sharded store")
        #expect(action == .set(newID))
        #expect(try store.load(oldID) == nil)
        let stored = try #require(try store.load(newID))
        #expect(stored.attributes["cart"] == Array("[1,2,3]".utf8))
        #expect(stored.attributes["user"] == Array("\"ada\"".utf8))
    }

    @Test func aNewSessionTakesTheSlotTagItIsGiven() throws {
        let session = Session(store: store, snapshot: nil, deferWrites: true, slotTag: "xY-")
        try session.set("a", 1)
        guard case .set(let planned) = session.prepareCommit() else {
            Issue.record("a new session gets a cookie")
            return
        }
        #expect(planned.slotTag == "xY-")
        _ = try session.commit()
        #expect(session.id == planned)
    }

    @Test func invalidateDeletesAndExpiresTheCookie() throws {
        let store = self.store
        let first = Session(store: store, snapshot: nil)
        try first.set("user", "ada")
        _ = try first.commit()
        let id = try #require(first.id)

        let logout = Session(store: store, snapshot: try store.load(id))
        try logout.invalidate()
        #expect(try logout.commit() == .expire)
        #expect(try store.load(id) == nil)
        #expect(logout.isEmpty)
    }

    @Test func writingAfterInvalidateStartsAFreshSession() throws {
        let store = self.store
        let first = Session(store: store, snapshot: nil)
        try first.set("user", "ada")
        _ = try first.commit()
        let oldID = try #require(first.id)
        let session = Session(store: store, snapshot: try store.load(oldID))
        try session.invalidate()
        try session.set("flash", "bye")
        let action = try session.commit()
        let newID = try #require(session.id)
        #expect(newID != oldID)
        #expect(action == .set(newID))
        #expect(try store.load(newID)?.attributes == ["flash": Array("\"bye\"".utf8)])
    }

    @Test func aSessionThatExpiredDuringTheRequestIsNotRevived() throws {
        let store = self.store
        let first = Session(store: store, snapshot: nil)
        try first.set("a", 1)
        _ = try first.commit()
        let oldID = try #require(first.id)
        let session = Session(store: store, snapshot: try store.load(oldID))
        clock.advance(millis: 20_000)
        try session.set("b", 2)
        let action = try session.commit()
        let newID = try #require(session.id)
        #expect(newID != oldID)
        #expect(action == .set(newID))
        #expect(try store.load(oldID) == nil)
        #expect(try store.load(newID)?.attributes == ["b": Array("2".utf8)])
    }

    @Test func typedValuesRoundTrip() throws {
        struct Cart: Codable, Equatable { var items: [String]; var total: Double }
        let store = self.store
        let session = Session(store: store, snapshot: nil)
        let cart = Cart(items: ["book", "pen"], total: 12.5)
        try session.set("cart", cart)
        _ = try session.commit()
        let id = try #require(session.id)
        let reloaded = Session(store: store, snapshot: try store.load(id))
        #expect(try reloaded.get("cart", as: Cart.self) == cart)
        #expect(throws: SessionStoreError.self) { try reloaded.get("cart", as: Int.self) }
    }
}

@Suite struct MemoryStoreLimitTests {
    @Test func capacityIsEnforcedAfterSweepingExpiredSessions() throws {
        let clock = ManualClock()
        let store = MemorySessionStore(expiry: SessionExpiry(idleTimeoutMillis: 1000), clock: clock.clock, maxSessions: 2)
        for _ in 0..<2 {
            _ = try store.apply(SessionDelta(id: .generate(), changes: [], createIfMissing: true))
        }
        let error = #expect(throws: SessionStoreError.self) {
            _ = try store.apply(SessionDelta(id: .generate(), changes: [], createIfMissing: true))
        }
        #expect(error?.code == .capacityExceeded)
        clock.advance(millis: 2000)
        // Expired sessions make room; live ones are never dropped.
        #expect(try store.apply(SessionDelta(id: .generate(), changes: [], createIfMissing: true)) != nil)
        #expect(store.count == 1)
    }

    @Test func oversizedSessionIsRefusedAndNothingIsWritten() throws {
        let store = MemorySessionStore(maxSessionBytes: 100)
        let id = SessionID.generate()
        _ = try store.apply(SessionDelta(id: id, changes: [.set("a", Array("1".utf8))], createIfMissing: true))
        let error = #expect(throws: SessionStoreError.self) {
            _ = try store.apply(SessionDelta(id: id, changes: [.set("b", [UInt8](repeating: 0x31, count: 200))]))
        }
        #expect(error?.code == .sessionTooLarge)
        #expect(try store.load(id)?.attributes == ["a": Array("1".utf8)])
    }

    @Test func sweepRemovesOnlyExpiredSessions() throws {
        let clock = ManualClock()
        let store = MemorySessionStore(expiry: SessionExpiry(idleTimeoutMillis: 1000), clock: clock.clock)
        let old = SessionID.generate()
        _ = try store.apply(SessionDelta(id: old, changes: [], createIfMissing: true))
        clock.advance(millis: 600)
        let young = SessionID.generate()
        _ = try store.apply(SessionDelta(id: young, changes: [], createIfMissing: true))
        clock.advance(millis: 600)
        #expect(store.sweep() == 1)
        #expect(store.count == 1)
        #expect(try store.load(young) != nil)
    }

    @Test func sweeperThreadRunsOnItsOwn() async throws {
        let clock = ManualClock()
        let store = MemorySessionStore(expiry: SessionExpiry(idleTimeoutMillis: 1000), clock: clock.clock)
        _ = try store.apply(SessionDelta(id: .generate(), changes: [], createIfMissing: true))
        clock.advance(millis: 5000)
        store.startSweeper(intervalMillis: 20)
        defer { store.stopSweeper() }
        var waited = 0
        while store.count > 0 && waited < 2000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 10
        }
        #expect(store.count == 0)
    }

    @Test func expiryArithmetic() {
        let expiry = SessionExpiry(idleTimeoutMillis: 1000, absoluteTimeoutMillis: 5000)
        #expect(expiry.touchIntervalMillis == 100)
        #expect(!expiry.isExpired(createdAt: 0, lastAccess: 0, now: 999))
        #expect(expiry.isExpired(createdAt: 0, lastAccess: 0, now: 1000))
        #expect(expiry.isExpired(createdAt: 0, lastAccess: 4900, now: 5000))
        #expect(expiry.remainingMillis(createdAt: 0, now: 0) == 1000)
        #expect(expiry.remainingMillis(createdAt: 0, now: 4500) == 500)
        #expect(expiry.remainingMillis(createdAt: 0, now: 6000) == 0)
    }
}
