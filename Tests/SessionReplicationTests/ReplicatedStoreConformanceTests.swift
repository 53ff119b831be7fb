import SessionCore
import SessionReplication
import SessionStoreConformance
import Testing

/// A replicated store, unwired, on a manual clock: time moves only when the suite says.
struct ReplicatedHarness: SessionStoreHarness {
    let clock = ManualClock()
    func makeStore(expiry: SessionExpiry) throws -> any SessionStore {
        ReplicatedSessionStore(node: 1, expiry: expiry, clock: clock.clock)
    }
    func advance(millis: Int64) { clock.advance(millis: millis) }
}

@Suite struct ReplicatedStoreConformanceTests {
    @Test(arguments: SessionStoreConformance.allCases)
    func conforms(_ check: SessionStoreConformance) throws {
        try check.run(ReplicatedHarness())
    }
}

/// A replicated store, unwired, with a principal limit.
struct ReplicatedPrincipalHarness: PrincipalStoreHarness {
    let clock = ManualClock()
    func makeStore(expiry: SessionExpiry, principalLimit: PrincipalSessionLimit?) throws -> any PrincipalIndexedStore {
        ReplicatedSessionStore(node: 1, expiry: expiry, clock: clock.clock, principalLimit: principalLimit, nodeName: "node-1")
    }
    func advance(millis: Int64) { clock.advance(millis: millis) }
    func sweep(_ store: any PrincipalIndexedStore) throws { try #require(store as? ReplicatedSessionStore).sweep() }
}

@Suite struct ReplicatedPrincipalConformanceTests {
    @Test(arguments: PrincipalStoreConformance.allCases)
    func indexesPrincipals(_ check: PrincipalStoreConformance) throws {
        try check.run(ReplicatedPrincipalHarness())
    }
}
