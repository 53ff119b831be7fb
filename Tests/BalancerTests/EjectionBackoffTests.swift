import Testing

@testable import Balancer

/// Passive ejection on connect failures (README: "backoff 1 s doubling to 30 s, doubled only by
/// attempts made after the previous ejection ended"), driven by the registry's own clock
/// argument: every decision takes `now` in monotonic milliseconds, so no real time passes.
@Suite("Balancer: ejection backoff")
struct EjectionBackoffTests {
    /// Two backends; b0 is the one that fails. Base 1 s, at most 8 s.
    func registry() -> BackendRegistry {
        let backends = (0..<2).map { BackendConfiguration(name: "b\($0)", host: "127.0.0.1", port: 1 + $0) }
        var configuration = BalancerConfiguration(backends: backends)
        configuration.ejectBaseMillis = 1_000
        configuration.ejectMaxMillis = 8_000
        return BackendRegistry(configuration: configuration)
    }

    /// Which backends `pick` hands out at `now` over a whole round (each slot given back).
    func picked(_ registry: BackendRegistry, now: Int64) -> Set<Int> {
        var seen = Set<Int>()
        for _ in 0..<4 {
            if case .backend(let index) = registry.pick(excluding: 0, now: now) {
                seen.insert(index)
                registry.release(index)
            }
        }
        return seen
    }

    /// The time from `failedAt` until b0 is picked again: the first `now` (in 100 ms steps) at which it is.
    func ejectedFor(_ registry: BackendRegistry, failedAt: Int64) -> Int64? {
        for step in Int64(0)...200 where picked(registry, now: failedAt + step * 100).contains(0) {
            return step * 100
        }
        return nil
    }

    @Test func aBackendFailingAgainIsEjectedForDoublingPeriodsUpToTheMaximum() {
        let r = registry()
        #expect(picked(r, now: 0) == [0, 1])
        var now: Int64 = 10_000
        var periods: [Int64?] = []
        for _ in 0..<5 {
            r.connectFailed(0, now: now)
            let period = ejectedFor(r, failedAt: now)
            periods.append(period)
            now += period ?? 0  // fails again as soon as it is back
        }
        #expect(periods == [1_000, 2_000, 4_000, 8_000, 8_000])
        #expect(r.states[0].ejections.load(ordering: .relaxed) == 5)
        #expect(picked(r, now: now - 1) == [1], "the other backend takes every turn meanwhile")
    }

    /// Connects that were under way when the backend was ejected fail too: they do not lengthen
    /// the ejection, nor double the next one.
    @Test func failuresDuringAnEjectionDoNotLengthenIt() {
        let r = registry()
        r.connectFailed(0, now: 10_000)
        r.connectFailed(0, now: 10_300)
        r.connectFailed(0, now: 10_900)
        #expect(ejectedFor(r, failedAt: 10_000) == 1_000)
        r.connectFailed(0, now: 11_000)
        #expect(ejectedFor(r, failedAt: 11_000) == 2_000, "the second ejection doubles the first, not more")
        #expect(r.states[0].failures.load(ordering: .relaxed) == 4)
        #expect(r.states[0].ejections.load(ordering: .relaxed) == 2)
    }

    /// A connection made ends the streak: the next failure starts again from the base period.
    @Test func aSuccessfulConnectResetsTheBackoff() {
        let r = registry()
        r.connectFailed(0, now: 10_000)
        r.connectFailed(0, now: 11_000)
        r.connectFailed(0, now: 13_000)
        #expect(ejectedFor(r, failedAt: 13_000) == 4_000)
        r.connectSucceeded(0)
        r.connectFailed(0, now: 20_000)
        #expect(ejectedFor(r, failedAt: 20_000) == 1_000)
    }
}
