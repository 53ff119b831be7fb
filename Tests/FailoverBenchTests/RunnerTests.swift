#if canImport(Glibc)
import Glibc
#endif
@testable import FailoverBench
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

@Suite(.timeLimit(.minutes(1)))
struct RunnerTests {
    private func configuration(_ server: CounterServer, durationSeconds: Double) throws -> BenchConfiguration {
        BenchConfiguration(
            target: try BenchTarget(baseURL: server.url), users: 3, durationSeconds: durationSeconds,
            pacing: .closedLoop(thinkTimeMillis: 5), progressIntervalMillis: 100)
    }

    @Test func progressIsReportedEveryIntervalWithGrowingCounts() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        let seen = Mutex<[BenchProgress]>([])
        let runner = try BenchRunner(configuration: try configuration(server, durationSeconds: 0.65), logger: quietLogger()) {
            progress in seen.withLock { $0.append(progress) }
        }
        let result = runner.run(name: "redis")
        let reports = seen.withLock { $0 }
        // How many reports a 0.65 s run at one per 100 ms gets depends on the scheduler; what
        // holds on any machine: at least one, and the n-th not before n intervals (so never more
        // than one per interval).
        try #require(!reports.isEmpty)
        #expect(reports.enumerated().allSatisfy { i, report in report.elapsedSeconds >= Double(i + 1) * 0.1 - 1e-6 })
        #expect(reports.allSatisfy { $0.strategy == "redis" && $0.durationSeconds == 0.65 })
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.counts.requests <= $1.counts.requests })
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.elapsedSeconds < $1.elapsedSeconds })
        #expect(reports.last.map { $0.counts.requests <= result.summary.counts.requests } == true)
        // The rates account for the answers: some report has one above zero once anything was answered.
        let last = try #require(reports.last)
        #expect(reports.allSatisfy { $0.answeredPerSecond >= 0 })
        #expect(reports.contains { $0.answeredPerSecond > 0 } == (last.counts.answered > 0))
        let line = last.line
        let elapsed = fixed(last.elapsedSeconds, 1)
        #expect(line.hasPrefix("redis  \(elapsed)/1s  ") && line.contains("req/s") && line.contains("errors 0"), "\(line)")
    }

    @Test func cancelEndsTheRunEarlyWithItsResultsSoFar() throws {
        let server = try CounterServer()
        defer { server.shutdown() }
        let runner = try BenchRunner(configuration: try configuration(server, durationSeconds: 60), logger: quietLogger())
        startThread {
            usleep(300_000)
            runner.cancel()
        }
        let result = runner.run(name: "cancelled")
        // Ended by the cancel: long before its 60 s (the test's one-minute limit would fail first).
        #expect(result.summary.seconds < 60)
        #expect(result.summary.counts.successes > 0)
        #expect(result.summary.counts.errors == 0)
    }

    @Test func invalidSettingsAreRejected() throws {
        let target = try BenchTarget(baseURL: "http://127.0.0.1:8080")
        let bad = [
            BenchConfiguration(target: target, users: 0),
            BenchConfiguration(target: target, durationSeconds: nil, maxRequests: nil),
            BenchConfiguration(target: target, durationSeconds: -1),
            BenchConfiguration(target: target, maxRequests: 0),
            BenchConfiguration(target: target, pacing: .fixedRate(requestsPerSecond: 0)),
            BenchConfiguration(target: target, pacing: .closedLoop(thinkTimeMillis: -1)),
            BenchConfiguration(target: target, requestTimeoutMillis: 0),
            BenchConfiguration(target: target, threads: 0),
            BenchConfiguration(target: target, bucketMillis: 1),
        ]
        for configuration in bad {
            #expect(throws: BenchConfigurationError.self) {
                _ = try BenchRunner(configuration: configuration, logger: quietLogger())
            }
        }
        _ = try BenchRunner(configuration: BenchConfiguration(target: target), logger: quietLogger())
    }
}
