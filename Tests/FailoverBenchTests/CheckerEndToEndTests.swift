import FailoverBench
import SystemSupport
import TestSupport
import Testing

/// The checker against a real server on a loopback socket that misbehaves
/// at chosen requests: the report must show exactly what the server did.
@Suite(.timeLimit(.minutes(1)))
struct CheckerEndToEndTests {
    @Test func aWellBehavedServerShowsNoAnomaliesAndNoErrors() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        let result = try runBench(against: server, users: 6, maxRequests: 300, threads: 2)
        let c = result.summary.counts
        #expect(c.requests == 300)
        #expect(c.successes == 300)
        #expect(c.errors == 0 && c.anomalies == 0)
        #expect(result.summary.retries == 0 && result.summary.failedRequests == 0)
        #expect(server.requests == 300)
        #expect(result.summary.connections == 6)
        #expect(result.summary.latency.count == 300)
        #expect(Set(result.summary.nodes.keys) == Set(CounterServer.nodes))
    }

    /// Each misbehaviour, armed at the given requests, fires that many times and
    /// is reported that many times under its kind, with nothing else wrong.
    @Test(arguments: [
        // Sessions dropped: a write answers 1, a read 0.
        (Misbehavior(resetAt: [9, 40, 41, 90, 150]), Misbehavior.Kind.reset, AnswerKind.lostSession, 5),
        // Writes applied twice (the first one at a user's first request).
        (Misbehavior(doubleApplyAt: [1, 20, 21, 22, 100, 200]), .doubleApply, .duplicate, 6),
        // Reads answering one less than the counter.
        (Misbehavior(staleReadAt: [10, 11, 60, 120]), .staleRead, .staleRead, 4),
        // Writes not applied, answering the old count.
        (Misbehavior(loseUpdateAt: [12, 13, 70, 160]), .loseUpdate, .lostUpdate, 4),
    ])
    func eachMisbehaviourIsReportedExactlyUnderItsKind(
        misbehavior: Misbehavior, kind: Misbehavior.Kind, reported: AnswerKind, times: Int
    ) throws {
        let server = try CounterServer(misbehavior)
        defer { server.shutdown() }
        let c = try runBench(against: server).summary.counts
        #expect(server.fired(kind) == times)
        #expect(c[reported] == times)
        #expect(c.anomalies == times && c.errors == 0)
        #expect(c.successes == 240 - times)
    }

    @Test func unavailableAnswersAreErrorsAndWritesAreRetriedOnce() throws {
        let server = try CounterServer(Misbehavior(unavailableAt: [3, 4, 5, 50, 51, 99, 180]))
        defer { server.shutdown() }
        let s = try runBench(against: server).summary
        #expect(server.fired(.unavailable) == 7)
        #expect(s.counts.errors == 7)
        #expect(s.errorKinds == ["http 503": 7])
        // Writes are retried (and the retry succeeds); reads are not.
        #expect(s.retries == server.unavailableWrites)
        #expect(s.failedRequests == 7 - server.unavailableWrites)
        #expect(s.counts.requests == 240 + s.retries)
        #expect(s.counts.anomalies == 0)
    }

    /// A write applied and then answered 503 is retried with the same key: a server that
    /// de-duplicates answers the stored count (a success); one that applies it again, a duplicate.
    @Test(arguments: [true, false])
    func aRetryOfAnAppliedWriteIsADuplicateOnlyWithoutDeduplication(dedup: Bool) throws {
        let server = try CounterServer(Misbehavior(unavailableAfterApplyAt: [2, 30, 31, 77], dedup: dedup))
        defer { server.shutdown() }
        let s = try runBench(against: server).summary
        #expect(server.fired(.unavailableAfterApply) == 4)
        #expect(s.counts.errors == 4 && s.retries == 4 && s.failedRequests == 0)
        #expect(s.counts.duplicates == (dedup ? 0 : 4))
        #expect(s.counts.anomalies == s.counts.duplicates)
    }

    /// A write applied only after the user's next write was answered (as one still running on a node
    /// whose client gave up): with keys the bench retried it, so it is applied twice — a real duplicate;
    /// without keys it was sent once and may land any time, so it is no anomaly.
    @Test(arguments: [true, false])
    func aWriteAppliedLateIsADuplicateOnlyWhenItWasRetried(keys: Bool) throws {
        let server = try CounterServer(Misbehavior(applyLateAt: [9, 30, 31, 100, 150]))
        defer { server.shutdown() }
        let s = try runBench(against: server, idempotencyKeys: keys).summary
        #expect(server.fired(.applyLate) == 5)
        #expect(s.counts.errors == 5)
        #expect(s.retries == (keys ? 5 : 0) && s.failedRequests == (keys ? 0 : 5))
        #expect(s.counts.duplicates == (keys ? 5 : 0))
        #expect(s.counts.anomalies == s.counts.duplicates)
        #expect((server.keyedRequests > 0) == keys)
    }

    /// Without keys: no key is sent, no write retried, a failed write (applied or not, now or
    /// later) is no anomaly, and the anomalies the server really makes are each counted once.
    @Test func withoutKeysUnknownWritesAreNotAnomaliesAndRealOnesAreStillCounted() throws {
        let unknown = try CounterServer(
            Misbehavior(unavailableAt: [5, 60], unavailableAfterApplyAt: [20, 90], applyLateAt: [30, 31, 120]))
        defer { unknown.shutdown() }
        let s = try runBench(against: unknown, idempotencyKeys: false).summary
        #expect(unknown.fired(.unavailable) == 2 && unknown.fired(.unavailableAfterApply) == 2 && unknown.fired(.applyLate) == 3)
        #expect(unknown.keyedRequests == 0, "no Idempotency-Key was sent")
        #expect(s.retries == 0 && s.counts.requests == 240 && unknown.requests == 240)
        #expect(s.counts.errors == 7 && s.failedRequests == 7)
        #expect(s.counts.anomalies == 0, "\(s.counts)")

        let bad = try CounterServer(Misbehavior(
            resetAt: [20, 21, 130], doubleApplyAt: [25, 140], loseUpdateAt: [33, 34, 150], staleReadAt: [40, 160, 161]))
        defer { bad.shutdown() }
        let c = try runBench(against: bad, users: 8, maxRequests: 400, threads: 2, idempotencyKeys: false).summary.counts
        #expect(bad.fired(.reset) == 3 && c.lostSessions == 3)
        #expect(bad.fired(.doubleApply) == 2 && c.duplicates == 2)
        #expect(bad.fired(.loseUpdate) == 3 && c.lostUpdates == 3)
        #expect(bad.fired(.staleRead) == 3 && c.staleReads == 3)
        #expect(c.errors == 0 && c.successes == 400 - 11)
        #expect(bad.keyedRequests == 0)
    }

    @Test func everyMisbehaviourAtOnceIsCountedExactly() throws {
        let server = try CounterServer(Misbehavior(
            unavailableAt: [7, 95], unavailableAfterApplyAt: [15], resetAt: [20, 21, 130], doubleApplyAt: [25, 140],
            loseUpdateAt: [33, 34, 150], staleReadAt: [40, 160, 161, 162]))
        defer { server.shutdown() }
        let result = try runBench(against: server, users: 8, maxRequests: 400, threads: 2)
        let c = result.summary.counts
        #expect(server.fired(.reset) == 3 && c.lostSessions == 3)
        #expect(server.fired(.doubleApply) == 2 && c.duplicates == 2)
        #expect(server.fired(.loseUpdate) == 3 && c.lostUpdates == 3)
        #expect(server.fired(.staleRead) == 4 && c.staleReads == 4)
        #expect(c.errors == 3)
        #expect(c.successes == c.requests - 3 - 12)
    }

    @Test func anIdleConnectionClosedByTheServerIsReopenedWithoutAnError() throws {
        let server = try CounterServer(idleTimeoutMillis: 100)
        defer { server.shutdown() }
        // A real idle timeout must fire: the users think 500 ms, 5x the server's 100 ms, so a loaded
        // machine still closes each idle connection before the next request.
        let s = try runBench(against: server, users: 2, maxRequests: 8, pacing: .closedLoop(thinkTimeMillis: 500))
            .summary
        #expect(s.counts.successes == 8)
        #expect(s.counts.errors == 0)
        // Each user's connection went idle for 500 ms after each answer, longer than the server keeps it.
        #expect(s.connections >= 6)
    }

    @Test func anUnreachableTargetGivesConnectErrorsOnly() throws {
        let port = try Sockets.freeLoopbackPort()
        let configuration = BenchConfiguration(
            target: try BenchTarget(baseURL: "http://127.0.0.1:\(port)"), users: 1, durationSeconds: 5,
            maxRequests: 10, retryBackoffMillis: 1)
        let s = try BenchRunner(configuration: configuration, logger: quietLogger()).run(name: "down").summary
        #expect(s.failedRequests == 10)
        // 8 writes (tried twice) and 2 reads.
        #expect(s.counts.errors == 18 && s.retries == 8)
        #expect(s.errorKinds == ["connect": 18])
        #expect(s.connections == 0)
        #expect(s.latency.count == 0)
    }
}
