import ArgumentParser
import SessionClusterNodeKit
import Testing

/// The example nodes' lame duck: the option, `LameDuck`, and `/healthz` while draining.
@Suite struct LameDuckTests {
    @Test func drainMarksDrainingAndWaitsTheDelay() async {
        let lameDuck = LameDuck(delayMillis: 300)
        #expect(!lameDuck.isDraining)
        let clock = ContinuousClock()
        let start = clock.now
        let drained = Task { await lameDuck.drain() }
        #expect(await eventuallyDraining(lameDuck), "draining from the start of drain()")
        await drained.value
        #expect(clock.now - start >= .milliseconds(300))
        #expect(lameDuck.isDraining, "for good")
        #expect(!lameDuck.beginDraining(), "only the first call begins draining")
    }

    @Test func zeroDelayReturnsAtOnce() async {
        let lameDuck = LameDuck(delayMillis: 0)
        let clock = ContinuousClock()
        let start = clock.now
        await lameDuck.drain()
        #expect(lameDuck.isDraining)
        #expect(clock.now - start < .seconds(1))
        #expect(LameDuck(delayMillis: -5).delayMillis == 0)
    }

    @Test func healthAnswersDrainingLikeTheCoreNode() {
        #expect(DemoAPI.health(node: "n1", problem: nil) == (200, "{\"status\":\"ok\",\"node\":\"n1\"}"))
        #expect(DemoAPI.health(node: "n1", problem: nil, draining: true) == (503, "{\"status\":\"draining\",\"node\":\"n1\"}"))
        #expect(
            DemoAPI.health(node: "n\"1", problem: "redis down", draining: true)
                == (503, "{\"status\":\"draining\",\"node\":\"n\\\"1\"}"), "draining wins over a problem; the name is escaped")
        #expect(DemoAPI.health(node: "n1", problem: "x").status == 503)
    }

    @Test func drainDelayOption() throws {
        #expect(try ExampleNodeOptions.parse([]).drainDelayMs == 5000)
        #expect(try ExampleNodeOptions.parse(["--drain-delay-ms", "0"]).drainDelayMs == 0)
        #expect(try ExampleNodeOptions.parse(["--drain-delay-ms", "600000"]).drainDelayMs == 600_000)
        #expect(throws: (any Error).self) { try ExampleNodeOptions.parse(["--drain-delay-ms", "600001"]) }
        #expect(throws: (any Error).self) { try ExampleNodeOptions.parse(["--drain-delay-ms", "-1"]) }
    }

    private func eventuallyDraining(_ lameDuck: LameDuck) async -> Bool {
        for _ in 0..<100 {
            if lameDuck.isDraining { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return lameDuck.isDraining
    }
}
