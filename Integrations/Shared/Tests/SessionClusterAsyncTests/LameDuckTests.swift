import ArgumentParser
import SessionClusterNodeKit
import Synchronization
import Testing

/// The example nodes' lame duck: the option, `LameDuck`, and `/healthz` while draining.
@Suite struct LameDuckTests {
    @Test func drainMarksDrainingAndWaitsTheDelay() async {
        // The wait itself is recorded, not timed: drain() asks for the whole delay, once,
        // and the node is a lame duck while it waits.
        let sleeper = RecordingSleeper()
        let lameDuck = LameDuck(delayMillis: 300, sleep: sleeper.sleep)
        #expect(!lameDuck.isDraining)
        let drained = Task { await lameDuck.drain() }
        let waited = await sleeper.nextWait()
        #expect(waited == 300, "drain() waits the configured delay")
        #expect(lameDuck.isDraining, "draining while it waits")
        sleeper.release()
        await drained.value
        #expect(sleeper.waits == [300])
        #expect(lameDuck.isDraining, "for good")
        #expect(!lameDuck.beginDraining(), "only the first call begins draining")
    }

    @Test func zeroDelayDoesNotWait() async {
        let sleeper = RecordingSleeper()
        let lameDuck = LameDuck(delayMillis: 0, sleep: sleeper.sleep)
        await lameDuck.drain()
        #expect(lameDuck.isDraining)
        #expect(sleeper.waits.isEmpty, "no wait at all")
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

}

/// A `LameDuck` sleep that records each wait and returns when the test releases it.
private final class RecordingSleeper: Sendable {
    private let state = Mutex<(waits: [Int], waiting: CheckedContinuation<Void, Never>?)>(([], nil))
    private let started = AsyncStream<Int>.makeStream()

    var waits: [Int] { state.withLock { $0.waits } }

    var sleep: @Sendable (Int) async -> Void {
        { [self] millis in
            await withCheckedContinuation { continuation in
                state.withLock {
                    $0.waits.append(millis)
                    $0.waiting = continuation
                }
                started.continuation.yield(millis)
            }
        }
    }

    /// The milliseconds of the next wait, once it began.
    func nextWait() async -> Int? {
        var iterator = started.stream.makeAsyncIterator()
        return await iterator.next()
    }

    /// Ends the wait in progress.
    func release() {
        state.withLock { state in
            state.waiting?.resume()
            state.waiting = nil
        }
    }
}
