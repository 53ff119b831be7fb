#if canImport(Glibc)
import Glibc
#endif
import FailoverBench
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
        #expect((5...6).contains(reports.count))
        #expect(reports.allSatisfy { $0.strategy == "redis" && $0.durationSeconds == 0.65 })
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.counts.requests <= $1.counts.requests })
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.elapsedSeconds < $1.elapsedSeconds })
        #expect(reports.last.map { $0.counts.requests <= result.summary.counts.requests } == true)
        #expect(reports.last.map { $0.answeredPerSecond > 0 } == true)
        let line = try #require(reports.last?.line)
        #expect(line.hasPrefix("redis  0.") && line.contains("/1s") && line.contains("req/s") && line.contains("errors 0"))
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
        #expect(result.summary.seconds < 5)
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
