#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SessionCore
import Synchronization
import SystemSupport

/// Tells a node that it was itself frozen — SIGSTOP, a stalled VM, a pause
/// of the whole process — and for how long after that it must not trust what
/// it believes of its peers.
///
/// While a node is frozen its clients time out and retry their writes, with
/// the same `Idempotency-Key`, on other nodes. When it resumes, the requests
/// waiting in its sockets run at once, in a race with the peers' changes
/// waiting in its replication sockets: a request that wins runs a key its
/// peers already ran (in async mode no one asks; in sync mode the node has
/// marked every peer lagging while it slept, and lagging peers are not asked).
/// After a pause the node therefore asks every connected peer for every key,
/// lagging or not and whatever `keyLookups` says, for `windowNanos`: the peer
/// that ran the retry answers with its record and the request replays it.
///
/// A ticker thread notes the time every `tickNanos`; a gap of more than
/// `thresholdNanos` between two notes is a pause. The request path checks
/// too (`pausedRecently`): after a resume, a request may run before the
/// ticker does. A false alarm (the ticker starved on a loaded machine) costs
/// only lookups for a while.
final class PauseDetector: Sendable {
    struct State {
        /// nil until `start()`: nothing is a pause before the node runs.
        var lastTick: UInt64?
        /// When the last pause was noticed: the node trusts its peer states again `windowNanos` later.
        var resumedAt: UInt64?
        var pauses = 0
        var longestPauseNanos: UInt64 = 0
        var stopped = false
    }

    let tickNanos: UInt64
    let thresholdNanos: UInt64
    let windowNanos: UInt64
    private let state: Mutex<State>
    /// `State.lastTick`, readable without the lock (0 before `start()`).
    private let lastTickSeen = Atomic<UInt64>(0)
    /// Called (outside the lock) with the length of each pause noticed.
    private let onPause: @Sendable (UInt64) -> Void

    init(
        tickNanos: UInt64 = 25_000_000, thresholdNanos: UInt64 = 250_000_000, windowNanos: UInt64,
        onPause: @escaping @Sendable (UInt64) -> Void = { _ in }
    ) {
        self.tickNanos = tickNanos
        self.thresholdNanos = thresholdNanos
        self.windowNanos = windowNanos
        self.onPause = onPause
        state = Mutex(State())
    }

    /// Notes that the node is running at `now`; a gap since the last note longer than the
    /// threshold is a pause. Returns whether this call noticed one.
    @discardableResult
    func tick(now: UInt64) -> Bool {
        let pause = state.withLock { s -> UInt64? in
            guard let last = s.lastTick else { return nil }
            defer {
                s.lastTick = max(last, now)
                lastTickSeen.store(s.lastTick ?? 0, ordering: .relaxed)
            }
            return notice(&s, now: now, threshold: thresholdNanos)
        }
        if let pause { onPause(pause) }
        return pause != nil
    }

    /// Before sending what was queued before a pause: notices a pause that ended just now (the
    /// ticker has not run since), so that `onPause` runs first, on the calling thread. One atomic
    /// load when the ticker is on time.
    func noticeIfOverdue(now: UInt64) {
        let last = lastTickSeen.load(ordering: .relaxed)
        guard last != 0, now > last, now - last > thresholdNanos else { return }
        _ = lastResume(now: now)
    }

    /// Whether the node was paused within the last `windowNanos` (noticing a pause that ended
    /// just now, before the ticker ran).
    func pausedRecently(now: UInt64) -> Bool { lastResume(now: now) != nil }

    /// When the node last resumed from a pause (monotonic), if that was within the last
    /// `windowNanos`; nil otherwise. Notices a pause that ended just now. A claim taken before
    /// that time may have been run meanwhile by a peer.
    func lastResume(now: UInt64) -> UInt64? {
        let (resumed, pause) = state.withLock { s -> (UInt64?, UInt64?) in
            let pause = notice(&s, now: now, threshold: thresholdNanos)
            guard let resumedAt = s.resumedAt, now &- resumedAt < windowNanos else { return (nil, pause) }
            return (resumedAt, pause)
        }
        if let pause { onPause(pause) }
        return resumed
    }

    /// Pauses noticed so far, and the longest.
    var pauses: (count: Int, longestNanos: UInt64) { state.withLock { ($0.pauses, $0.longestPauseNanos) } }

    /// Starts watching at `now`, with the ticker thread unless `ticker` is false (tests tick
    /// themselves); the thread ends after `stop()`.
    func start(now: UInt64 = monotonicNanos(), ticker: Bool = true) {
        state.withLock { $0.lastTick = now }
        lastTickSeen.store(now, ordering: .relaxed)
        guard ticker else { return }
        startThread { [self] in
            while !state.withLock({ $0.stopped }) {
                tick(now: monotonicNanos())
                usleep(UInt32(tickNanos / 1_000))
            }
        }
    }

    func stop() { state.withLock { $0.stopped = true } }

    private func notice(_ s: inout State, now: UInt64, threshold: UInt64) -> UInt64? {
        guard let last = s.lastTick, now > last, now - last > threshold else { return nil }
        let pause = now - last
        s.lastTick = now  // noticed once: the next check measures from here
        lastTickSeen.store(now, ordering: .relaxed)
        s.resumedAt = now
        s.pauses += 1
        s.longestPauseNanos = max(s.longestPauseNanos, pause)
        return pause
    }
}
