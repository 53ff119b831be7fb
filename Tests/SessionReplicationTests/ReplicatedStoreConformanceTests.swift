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
