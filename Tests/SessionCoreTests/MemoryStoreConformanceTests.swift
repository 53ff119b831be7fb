import SessionCore
import SessionStoreConformance
import Synchronization
import Testing

/// A memory store on a manual clock: time moves only when the suite says.
struct MemoryHarness: SessionStoreHarness {
    let clock = ManualClock()
    func makeStore(expiry: SessionExpiry) throws -> any SessionStore {
        MemorySessionStore(expiry: expiry, clock: clock.clock)
    }
    func advance(millis: Int64) { clock.advance(millis: millis) }
}

@Test(arguments: SessionStoreConformance.allCases)
func memoryStoreConforms(_ check: SessionStoreConformance) throws {
    try check.run(MemoryHarness())
}

/// A wrapper that counts the session calls it passes on: it must behave as the store it wraps.
private final class CountingStore: WrappingSessionStore {
    let base: any SessionStore & IdempotencyStore
    let calls = Mutex<[String: Int]>([:])

    init(base: any SessionStore & IdempotencyStore) { self.base = base }

    func around<T>(_ operation: String, session id: SessionID, _ body: () throws -> T) throws -> T {
        calls.withLock { $0[operation, default: 0] += 1 }
        return try body()
    }
}

/// A memory store inside a `WrappingSessionStore`.
struct WrappedMemoryHarness: SessionStoreHarness {
    let clock = ManualClock()
    func makeStore(expiry: SessionExpiry) throws -> any SessionStore {
        CountingStore(base: MemorySessionStore(expiry: expiry, clock: clock.clock))
    }
    func advance(millis: Int64) { clock.advance(millis: millis) }
}

@Test(arguments: SessionStoreConformance.allCases)
func aWrappedStoreConformsAndEverySessionCallPassesItsHook(_ check: SessionStoreConformance) throws {
    try check.run(WrappedMemoryHarness())
}

@Test func theHookSeesEachSessionCall() throws {
    let store = CountingStore(base: MemorySessionStore())
    let id = SessionID.generate()
    _ = try store.apply(SessionDelta(id: id, changes: [.set("a", encodeCounter(1))], createIfMissing: true))
    _ = try store.load(id)
    _ = try store.regenerate(id, to: SessionID.generate(slotTag: id.slotTag))
    try store.invalidate(id)
    #expect(store.calls.withLock { $0 } == ["apply": 1, "load": 1, "regenerate": 1, "invalidate": 1])
    #expect(store.readToken(for: id) == nil, "a memory store has no read tokens")
    #expect(try store.catchUp(id, to: "anything"))
}

/// A memory store on a manual clock, with a principal limit.
struct MemoryPrincipalHarness: PrincipalStoreHarness {
    let clock = ManualClock()
    var wrapped = false
    func makeStore(expiry: SessionExpiry, principalLimit: PrincipalSessionLimit?) throws -> any PrincipalIndexedStore {
        let store = MemorySessionStore(expiry: expiry, clock: clock.clock, principalLimit: principalLimit, nodeName: "n1")
        return wrapped ? CountingStore(base: store) : store
    }
    func advance(millis: Int64) { clock.advance(millis: millis) }
    func sweep(_ store: any PrincipalIndexedStore) throws {
        let memory = try #require((store as? MemorySessionStore) ?? ((store as? CountingStore)?.base as? MemorySessionStore))
        memory.sweep()
    }
}

@Test(arguments: PrincipalStoreConformance.allCases)
func memoryStoreIndexesPrincipals(_ check: PrincipalStoreConformance) throws {
    try check.run(MemoryPrincipalHarness())
}

@Test(arguments: PrincipalStoreConformance.allCases)
func aWrappedStoreIndexesPrincipalsThroughItsBase(_ check: PrincipalStoreConformance) throws {
    try check.run(MemoryPrincipalHarness(wrapped: true))
}

@Test func aThousandSessionsOfTenUsersExpireEachReportedOnceAndTheIndexEmpties() throws {
    let clock = ManualClock()
    let store = MemorySessionStore(expiry: SessionExpiry(idleTimeoutMillis: 1_000, absoluteTimeoutMillis: nil), clock: clock.clock)
    let expired = Mutex<[SessionHandle]>([])
    store.events.current = SessionEventHandler { event in
        if event.kind == .expired { expired.withLock { $0.append(event.handle) } }
    }
    for i in 0..<1_000 {
        let user = "user-\(i % 10)"
        _ = try store.changePrincipal(
            PrincipalChange(id: nil, newID: SessionID.generate(slotTag: SessionPrincipal.slotTag(of: user)), principal: user))
    }
    #expect(try store.sessions(ofPrincipal: "user-0").count == 100)
    clock.advance(millis: 1_001)
    #expect(store.sweep() == 1_000)
    #expect(store.sweep() == 0)
    let handles = expired.withLock { $0 }
    #expect(handles.count == 1_000 && Set(handles).count == 1_000)
    for user in 0..<10 { #expect(try store.sessions(ofPrincipal: "user-\(user)").isEmpty) }
    #expect(store.count == 0)
}
