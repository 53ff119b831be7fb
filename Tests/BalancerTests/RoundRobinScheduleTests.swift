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
}
