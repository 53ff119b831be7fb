import Synchronization
import Testing

@testable import SessionReplication

/// The pauses a detector reported.
private final class PauseLog: Sendable {
    let nanos = Mutex<[UInt64]>([])
}

/// `PauseDetector` on an injected clock: the time is the subject, so no test waits for it.
struct PauseDetectorTests {
    private let ms: UInt64 = 1_000_000

    private func detector(_ log: PauseLog = PauseLog()) -> PauseDetector {
        PauseDetector(
            tickNanos: 25 * ms, thresholdNanos: 250 * ms, windowNanos: 5_000 * ms,
            onPause: { nanos in log.nanos.withLock { $0.append(nanos) } })
    }

    @Test func regularTicksAreNoPause() {
        let pause = detector()
        pause.start(now: 1_000 * ms, ticker: false)
        for t in stride(from: 1_025, through: 3_000, by: 25) { #expect(!pause.tick(now: UInt64(t) * ms)) }
        #expect(!pause.pausedRecently(now: 3_010 * ms))
        #expect(pause.pauses.count == 0)
    }

    @Test func aGapLongerThanTheThresholdIsOnePauseAndDistrustsThePeersForTheWindow() {
        let log = PauseLog()
        let pause = detector(log)
        pause.start(now: 1_000 * ms, ticker: false)
        pause.tick(now: 1_025 * ms)
        #expect(!pause.tick(now: 1_270 * ms), "245 ms: a starved ticker, under the threshold")
        #expect(pause.tick(now: 4_270 * ms), "3 s without a tick: frozen")
        #expect(!pause.tick(now: 4_295 * ms), "noticed once")
        #expect(pause.pausedRecently(now: 4_300 * ms))
        for t in stride(from: 4_320, through: 9_320, by: 25) { pause.tick(now: UInt64(t) * ms) }
        #expect(pause.pausedRecently(now: 9_269 * ms))
        #expect(!pause.pausedRecently(now: 9_271 * ms), "the window is over")
        #expect(log.nanos.withLock { $0 } == [3_000 * ms])
        #expect(pause.pauses.count == 1 && pause.pauses.longestNanos == 3_000 * ms)
    }

    /// After a resume a request may run before the ticker does: its own check notices the pause.
    @Test func theRequestPathNoticesAPauseBeforeTheTicker() {
        let pause = detector()
        pause.start(now: 1_000 * ms, ticker: false)
        pause.tick(now: 1_025 * ms)
        #expect(pause.pausedRecently(now: 4_025 * ms))
        #expect(!pause.tick(now: 4_030 * ms), "the ticker finds it noticed already")
        #expect(pause.pauses.count == 1)
    }

    /// A claim taken before a pause is rechecked; one taken after it is not.
    @Test func lastResumeTellsWhetherAPauseEndedAfterAClaim() {
        let pause = detector()
        pause.start(now: 1_000 * ms, ticker: false)
        pause.tick(now: 1_025 * ms)
        #expect(pause.lastResume(now: 1_040 * ms) == nil, "no pause yet: a claim at 1.01 s is not rechecked")
        #expect(pause.lastResume(now: 4_000 * ms).map { $0 > 1_030 * ms } == true, "claimed at 1.03 s, frozen until 4 s")
        #expect(pause.lastResume(now: 4_020 * ms).map { $0 > 4_010 * ms } == false, "claimed after the resume")
        #expect(pause.pauses.count == 1)
    }

    @Test func nothingIsAPauseBeforeTheStart() {
        let pause = detector()
        #expect(!pause.tick(now: 10_000 * ms))
        #expect(!pause.pausedRecently(now: 20_000 * ms))
        pause.start(now: 30_000 * ms, ticker: false)
        #expect(!pause.pausedRecently(now: 30_100 * ms))
    }
}
