import SessionCore
import SessionStoreConformance
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
