import Testing

@testable import Balancer

@Suite("Balancer: weighted round robin schedule")
struct RoundRobinScheduleTests {
    @Test func equalWeightsAlternate() {
        #expect(BackendRegistry.smoothSchedule(weights: [1, 1, 1]) == [0, 1, 2])
    }

    @Test func weightsAreSmoothAndExact() {
        let schedule = BackendRegistry.smoothSchedule(weights: [5, 1, 1])
        #expect(schedule == [0, 0, 1, 0, 2, 0, 0])
        let weights = [3, 7, 2, 1]
        let s = BackendRegistry.smoothSchedule(weights: weights)
        #expect(s.count == 13)
        for (i, w) in weights.enumerated() { #expect(s.filter { $0 == i }.count == w) }
    }

    @Test func survivorsShareAnUnavailableBackendsTurnsEvenly() {
        let backends = (0..<3).map { BackendConfiguration(name: "b\($0)", host: "127.0.0.1", port: 1 + $0) }
        let registry = BackendRegistry(configuration: BalancerConfiguration(backends: backends))
        registry.states[1].draining.store(true, ordering: .relaxed)
        var picks = [0, 0, 0]
        for _ in 0..<300 {
            guard case .backend(let index) = registry.pick(excluding: 0, now: 0) else {
                Issue.record("no backend picked")
                return
            }
            picks[index] += 1
            registry.release(index)
        }
        #expect(picks == [150, 0, 150], "\(picks)")
    }
}
