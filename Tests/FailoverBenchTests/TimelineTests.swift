import FailoverBench
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(1)))
struct TimelineTests {
    /// Latencies of at least 100 ms, in a result.
    private func slowAnswers(_ result: StrategyResult) -> UInt64 {
        result.latencyHistogram.count(within: 100_000...60_000_000)
    }

    @Test func fixedRateLatencyRunsFromTheIntendedSendTime() throws {
        // One user at 100 requests/s; request 20 stalls 300 ms. The ~20 requests due during
        // the first 200 ms of the stall wait at least 100 ms each, counted from when they were due.
        let server = try CounterServer(Misbehavior(stall: (request: 20, millis: 300)))
        defer { server.shutdown() }
        let result = try runBench(
            against: server, users: 1, maxRequests: 100, pacing: .fixedRate(requestsPerSecond: 100))
        #expect(result.summary.counts.successes == 100)
        #expect(slowAnswers(result) >= 15)
        #expect(result.summary.latency.maxMillis.map { $0 >= 295 } == true)
        // Sending continued on schedule: 100 requests at 100/s take about 1 s, not 1.3 s + catch-up.
        #expect(result.summary.seconds < 1.25)
    }

    @Test func closedLoopLatencyRunsFromTheSend() throws {
        let server = try CounterServer(Misbehavior(stall: (request: 20, millis: 300)))
        defer { server.shutdown() }
        let result = try runBench(against: server, users: 1, maxRequests: 100)
        #expect(result.summary.counts.successes == 100)
        // Only the stalled request itself (a loaded machine may add one or two slow ones).
        #expect((1...3).contains(slowAnswers(result)))
        #expect(result.summary.latency.maxMillis.map { $0 >= 295 } == true)
        // The user waited 300 ms between two answers.
        #expect(result.summary.longestGap.millis >= 295)
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
        #expect((11...13).contains(buckets.count))
        // Every 2xx answer names its node; each bucket's node counts add up to its answers.
        #expect(buckets.allSatisfy { $0.nodes.values.reduce(0, +) == $0.counts.answered })
        #expect(result.summary.nodes.values.reduce(0, +) == sum.answered)
        // A bucket has a p99 exactly when it has 2xx answers (each one's latency is recorded).
        #expect(buckets.allSatisfy { ($0.counts.answered > 0) == ($0.p99Millis != nil) })
        #expect(result.summary.latency.count == sum.answered)
        // 200/s for 1.2 s.
        #expect((200...260).contains(sum.requests))
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
        for (step, (_, at)) in zip(plan.steps, applied) {
            #expect(at >= step.atMillis && at < step.atMillis + 150, "\(step) applied at \(at) ms")
        }
        #expect(result.faults.map(\.label) == applied.map(\.label))
        #expect(result.faults.map(\.plannedMillis) == [300, 400, 600, 700])
        #expect(result.faults.allSatisfy { $0.error == nil && $0.atMillis >= $0.plannedMillis })
        // The injector took the server down from the kill to the restart: the errors start after the kill.
        let kill = result.faults[0]
        #expect(kill.detectMillis.map { $0 < 150 } == true)
        #expect(result.summary.counts.errors > 0)
        let errorBuckets = result.buckets.filter { $0.counts.errors > 0 }
        #expect(errorBuckets.allSatisfy { $0.startMillis >= 250 && $0.startMillis < 750 })
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
            #expect(at >= planned && at < planned + 150, "planned at \(planned) ms, applied at \(at) ms")
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
