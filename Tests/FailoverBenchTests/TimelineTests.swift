@testable import FailoverBench
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(1)))
struct TimelineTests {
    /// Answers of at least `millis` in a result.
    private func answers(atLeast millis: UInt64, _ result: StrategyResult) -> UInt64 {
        result.latencyHistogram.count(within: millis * 1_000...60_000_000)
    }

    // The two pacing tests below stall one request for 1 s and compare how many answers took at
    // least half of that. No assertion is on the run's duration: a loaded machine only makes
    // answers slower, which can add slow answers to the fixed-rate run (asserted as a lower bound)
    // and, in the closed-loop run, would need nine separate half-second stalls to reach its bound.

    @Test func fixedRateLatencyRunsFromTheIntendedSendTime() throws {
        // One user at 100 requests/s; request 20 stalls 1 s. The ~50 requests due during the
        // first half of the stall wait at least 500 ms each, counted from when they were due.
        let server = try CounterServer(Misbehavior(stall: (request: 20, millis: 1_000)))
        defer { server.shutdown() }
        let result = try runBench(
            against: server, users: 1, maxRequests: 100, pacing: .fixedRate(requestsPerSecond: 100))
        #expect(result.summary.counts.successes == 100)
        #expect(answers(atLeast: 500, result) >= 30, "latency must run from when each request was due")
        #expect(result.summary.latency.maxMillis.map { $0 >= 980 } == true)  // 2 significant digits
    }

    @Test func closedLoopLatencyRunsFromTheSend() throws {
        let server = try CounterServer(Misbehavior(stall: (request: 20, millis: 1_000)))
        defer { server.shutdown() }
        let result = try runBench(against: server, users: 1, maxRequests: 100)
        #expect(result.summary.counts.successes == 100)
        // The stalled request itself; the ones after it are sent when it returns (a fixed rate
        // would count ~50 here, see above).
        #expect((1..<10).contains(answers(atLeast: 500, result)), "latency must run from the send, not from when it was due")
        #expect(result.summary.latency.maxMillis.map { $0 >= 980 } == true)
        // The user waited the stall between two answers.
        #expect(result.summary.longestGap.millis >= 995)
    }

    @Test func bucketsAddUpToTheTotals() throws {
        let server = try CounterServer(Misbehavior(unavailableAt: [30], resetAt: [50], doubleApplyAt: [80]))
        defer { server.shutdown() }
        let result = try runBench(
            against: server, users: 3, maxRequests: nil, durationSeconds: 1.2,
            pacing: .fixedRate(requestsPerSecond: 200), bucketMillis: 100)
        let buckets = result.buckets
        var sum = OutcomeCounts()
        for b in buckets { sum.add(b.counts) }
        #expect(sum == result.summary.counts)
        #expect(sum.errors == 1 && sum.lostSessions == 1 && sum.duplicates == 1)
        #expect(buckets.map(\.startMillis) == Array(stride(from: 0, to: buckets.count * 100, by: 100)))
        #expect(buckets.dropLast().allSatisfy { $0.durationMillis == 100 })
        // Every bucket of the run is there, empty or not (the run lasted at least its 1.2 s).
        #expect(buckets.count >= 12)
        // Every 2xx answer names its node; each bucket's node counts add up to its answers.
        #expect(buckets.allSatisfy { $0.nodes.values.reduce(0, +) == $0.counts.answered })
        #expect(result.summary.nodes.values.reduce(0, +) == sum.answered)
        // A bucket has a p99 exactly when it has 2xx answers (each one's latency is recorded).
        #expect(buckets.allSatisfy { ($0.counts.answered > 0) == ($0.p99Millis != nil) })
        #expect(result.summary.latency.count == sum.answered)
    }

    /// The timeline driven with given arrival times (no real time): each answer lands in the
    /// bucket of its arrival, the last bucket is cut at the run's end, and a fault's time to
    /// detect and to recover follow from the answers around it.
    @Test func answersAreBucketedByTheirArrivalTime() throws {
        let start: Int64 = 7_000_000_000
        let recorder = Recorder(startNanos: start, bucketMillis: 100)
        func answer(
            _ millis: Int64, _ kind: AnswerKind, node: String? = nil, latencyMillis: UInt64? = nil, error: String? = nil,
            retry: Bool = false
        ) {
            recorder.record(RecordedAnswer(
                atNanos: start + millis * 1_000_000, kind: kind, latencyMicros: latencyMillis.map { $0 * 1_000 },
                node: node, errorKind: error, isRetry: retry))
        }
        answer(0, .success, node: "n1", latencyMillis: 2)
        answer(99, .success, node: "n2", latencyMillis: 3)
        answer(100, .error, error: "timeout")
        answer(150, .success, node: "n1", latencyMillis: 40, retry: true)
        answer(420, .duplicate, node: "n1", latencyMillis: 5)
        recorder.addMarker(FaultMarker(action: .kill, node: "n2", plannedMillis: 90, atMillis: 95))
        let outcome = recorder.finish(durationNanos: 450_000_000)

        let buckets = outcome.buckets
        #expect(buckets.map(\.startMillis) == [0, 100, 200, 300, 400])
        #expect(buckets.map(\.durationMillis) == [100, 100, 100, 100, 50], "the last bucket ends with the run")
        #expect(buckets.map(\.counts.successes) == [2, 1, 0, 0, 0])
        #expect(buckets.map(\.counts.errors) == [0, 1, 0, 0, 0])
        #expect(buckets.map(\.counts.duplicates) == [0, 0, 0, 0, 1])
        #expect(buckets.map(\.nodes) == [["n1": 1, "n2": 1], ["n1": 1], [:], [:], ["n1": 1]])
        #expect(buckets.map { $0.p99Millis != nil } == [true, true, false, false, true])
        #expect(buckets[1].p99Millis.map { (39...41).contains($0) } == true, "\(buckets[1])")

        let summary = outcome.summary
        #expect(summary.counts.requests == 5 && summary.counts.answered == 4 && summary.counts.errors == 1)
        #expect(summary.retries == 1 && summary.errorKinds == ["timeout": 1])
        #expect(summary.nodes == ["n1": 3, "n2": 1])
        #expect(summary.seconds == 0.45)
        #expect(summary.latency.count == 4)

        // The first issue after the kill (at 95 ms) is the error at 100 ms; the last bad bucket
        // (errors) is the one from 100 ms, so the run was healthy again from 200 ms.
        let marker = try #require(outcome.markers.first)
        #expect(marker.detectMillis == 5)
        #expect(marker.recoverMillis == 105)
    }

    @Test func faultsAreAppliedOnTimeAndMarked() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        let injector = RecordingInjector(server: server)
        let plan = try FaultPlan(parsing: ["kill:node2@300ms", "stop:node3@400ms-600ms", "restart:node2@700ms"])
        let result = try runBench(
            against: server, users: 3, maxRequests: nil, durationSeconds: 1.2, faults: plan, injector: injector)
        let applied = injector.applied
        #expect(applied.map(\.label) == ["kill node2", "stop node3", "resume node3", "restart node2"])
        // Never early (how late a loaded machine makes them is not asserted: no upper bound on time).
        for (step, (_, at)) in zip(plan.steps, applied) {
            #expect(at >= step.atMillis, "\(step) applied at \(at) ms")
        }
        #expect(result.faults.map(\.label) == applied.map(\.label))
        #expect(result.faults.map(\.plannedMillis) == [300, 400, 600, 700])
        #expect(result.faults.allSatisfy { $0.error == nil && $0.atMillis >= $0.plannedMillis })
        // Each marker is where the injector saw its action, in the run's time.
        #expect(zip(result.faults, applied).allSatisfy { $0.atMillis <= $1.millis })
        // The injector took the server down at the kill: errors came, none before it, and the
        // kill's time to detect is the first of them.
        let kill = result.faults[0]
        #expect(result.summary.counts.errors > 0)
        let detect = try #require(kill.detectMillis, "an error after the kill")
        let errorBuckets = result.buckets.filter { $0.counts.errors > 0 }
        #expect(errorBuckets.allSatisfy { $0.startMillis + $0.durationMillis > kill.atMillis })
        #expect(errorBuckets.first.map { $0.startMillis <= kill.atMillis + detect } == true)
    }

    @Test func aNodeStillStoppedAtTheEndIsResumedAndInjectorErrorsAreMarked() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        let injector = RecordingInjector(server: server, failing: "restart")
        let plan = try FaultPlan(parsing: ["restart:node1@100ms", "stop:node3@200ms-9s"])
        // 2 users × 10 requests, 50 ms apart: about 0.5 s, bounded by the request count.
        let result = try runBench(
            against: server, users: 2, maxRequests: 20, durationSeconds: nil, pacing: .closedLoop(thinkTimeMillis: 50),
            faults: plan, injector: injector)
        #expect(injector.applied.map(\.label) == ["restart node1", "stop node3", "resume node3"])
        #expect(result.faults.map(\.label) == ["restart node1", "stop node3", "resume node3"])
        #expect(result.faults[0].error == "no restart today")
        #expect(result.faults[2].plannedMillis == 9_000)
        #expect(result.faults[2].atMillis >= 300)
    }

    @Test func aRollingRestartRestartsEachNodeInTurnOnTime() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        let injector = RecordingInjector(server: server)
        let plan = try FaultPlan(parsing: ["rolling@200ms:250ms"]).resolvingRolling(nodes: ["n1", "n2", "n3"])
        let result = try runBench(
            against: server, users: 2, maxRequests: nil, durationSeconds: 1.0, pacing: .closedLoop(thinkTimeMillis: 5),
            faults: plan, injector: injector)
        #expect(injector.applied.map(\.label) == ["restart n1", "restart n2", "restart n3"])
        for (planned, (_, at)) in zip([200, 450, 700], injector.applied) {
            #expect(at >= planned, "planned at \(planned) ms, applied early at \(at) ms")
        }
        #expect(result.faults.map(\.label) == ["restart n1", "restart n2", "restart n3"])
        #expect(result.faults.map(\.plannedMillis) == [200, 450, 700])
        #expect(result.settings.faults == ["rolling:n1,n2,n3@0.2s:0.25s"])
        #expect(result.settledShare == nil, "n1...n3 never answered (the test server's nodes are node-a and node-b)")
    }

    @Test func detectIsTheFirstIssueAfterTheFault() {
        #expect(FailoverAnalysis.detectMillis(faultAtMillis: 1_000, issueMillis: [200, 900, 1_040, 1_500]) == 40)
        #expect(FailoverAnalysis.detectMillis(faultAtMillis: 1_000, issueMillis: [1_000]) == 0)
        #expect(FailoverAnalysis.detectMillis(faultAtMillis: 1_000, issueMillis: [200, 999]) == nil)
        // Issues from the next fault on belong to that fault.
        #expect(FailoverAnalysis.detectMillis(faultAtMillis: 1_000, nextFaultAtMillis: 1_500, issueMillis: [1_500]) == nil)
        #expect(FailoverAnalysis.detectMillis(faultAtMillis: 1_000, nextFaultAtMillis: 1_500, issueMillis: [1_499]) == 499)
    }

    @Test func recoverIsTheStartOfTheHealthyTailAfterTheFault() {
        // 250 ms buckets, 100 answers each; the fault at 1,100 ms; errors in buckets 4 and 5,
        // then bucket 6 at 50 answers (below 90 % of the median 100), healthy from bucket 7 (1,750 ms).
        var answered = Array(repeating: 100, count: 12)
        var errors = Array(repeating: 0, count: 12)
        errors[4] = 3
        errors[5] = 1
        answered[6] = 50
        answered[0] = 10  // warm-up: left out of the baseline
        let buckets = makeBuckets(answered: answered, errors: errors)
        let baseline = FailoverAnalysis.baseline(buckets: buckets, before: 1_100, bucketMillis: 250)
        #expect(baseline == 100)
        #expect(
            FailoverAnalysis.recoverMillis(
                faultAtMillis: 1_100, nextFaultAtMillis: nil, buckets: buckets, baseline: baseline, bucketMillis: 250)
                == 650)
        // The next fault at 1,600 ms ends the window while still bad: not recovered.
        #expect(
            FailoverAnalysis.recoverMillis(
                faultAtMillis: 1_100, nextFaultAtMillis: 1_600, buckets: buckets, baseline: baseline, bucketMillis: 250)
                == nil)
        // Nothing bad after a fault: recovered at once.
        #expect(
            FailoverAnalysis.recoverMillis(
                faultAtMillis: 2_100, nextFaultAtMillis: nil, buckets: buckets, baseline: baseline, bucketMillis: 250)
                == 0)
        // Without a baseline only errors count: bucket 6 is fine, recovered at 1,500 ms.
        #expect(
            FailoverAnalysis.recoverMillis(
                faultAtMillis: 1_100, nextFaultAtMillis: nil, buckets: buckets, baseline: nil, bucketMillis: 250)
                == 400)
        let markers = FailoverAnalysis.annotate(
            [FaultMarker(action: .restart, node: "n1", plannedMillis: 2_000, atMillis: 2_000),
                FaultMarker(action: .kill, node: "n1", plannedMillis: 1_100, atMillis: 1_100)],
            buckets: buckets, issueMillis: [1_130, 1_300], bucketMillis: 250)
        #expect(markers.map(\.label) == ["kill n1", "restart n1"])
        #expect(markers.map(\.detectMillis) == [30, nil])
        #expect(markers.map(\.recoverMillis) == [650, 0])
    }
}

/// Buckets of 250 ms with the given 2xx answers and errors.
func makeBuckets(answered: [Int], errors: [Int]) -> [TimelineBucket] {
    zip(answered, errors).enumerated().map { i, pair in
        var counts = OutcomeCounts()
        counts.successes = pair.0
        counts.errors = pair.1
        return TimelineBucket(startMillis: i * 250, durationMillis: 250, counts: counts, p99Millis: 1.5, nodes: ["n1": pair.0])
    }
}

/// Records the actions and their times; `kill` takes the test server down, `restart` brings it back.
final class RecordingInjector: FaultInjector {
    struct InjectorError: Error, CustomStringConvertible {
        var description: String { "no restart today" }
    }

    private let server: CounterServer
    private let failing: String?
    private let start = ContinuousClock.now
    private let log = Mutex<[(label: String, millis: Int)]>([])

    init(server: CounterServer, failing: String? = nil) {
        self.server = server
        self.failing = failing
    }

    /// The actions so far, with the milliseconds since the injector was made (just before the run started).
    var applied: [(label: String, millis: Int)] { log.withLock { $0 } }

    func apply(_ action: FaultAction, node: String) throws {
        let elapsed = ContinuousClock.now - start
        let millis = Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
        log.withLock { $0.append(("\(action.rawValue) \(node)", millis)) }
        if action.rawValue == failing { throw InjectorError() }
        if action == .kill { server.setDown(true) }
        if action == .restart { server.setDown(false) }
    }
}
