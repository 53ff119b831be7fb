import ArgumentParser
import Benchmarks
import Logging
import SessionRedis

#if canImport(Glibc)
import Glibc
#endif

extension SessionClusterCommand {
    /// Load+save round trips per second through `RedisSessionStore`: what one
    /// request of a node costs Redis (a load, then a save of its changes).
    struct BenchStore: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-store",
            abstract: "Measure session load+save round trips per second through the Redis session store.",
            discussion: """
                Creates --sessions sessions (a counter and a string of about --attribute-bytes \
                bytes each) under a key prefix of its own, then runs --concurrency threads for \
                --duration seconds, their commands pipelined on --pipeline-connections shared \
                connections (0: a pooled connection each). Each iteration picks a random session, \
                loads it, and applies a delta (set 'last', increment 'count'): one round trip. Prints \
                a JSON line and a summary — with Redis's CPU time per round trip over the measured \
                window (INFO cpu) — then deletes its keys.
                """)

        @Option(help: "Redis URL: redis://[[user]:password@]host[:port][/db].")
        var redis = "redis://127.0.0.1:6379"

        @Option(help: "Threads, and pooled Redis connections.")
        var concurrency = 50

        @Option(help: "Shared connections the threads' commands are pipelined on (0: none, a connection per command).")
        var pipelineConnections = RedisConfiguration().pipelineConnections

        @OptionGroup var window: MeasurementWindow

        @Option(help: "Sessions created beforehand; each iteration picks one at random.")
        var sessions = 10_000

        @Option(help: "Size of each session's string attribute, in bytes.")
        var attributeBytes = 100

        @Flag(help: "Log every session in first (four sessions per user): the round trips then keep the principal index.")
        var loggedIn = false

        @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "warning"

        func validate() throws {
            guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
            do { try bench.validate() } catch { throw ValidationError(error.description) }
        }

        /// The benchmark's settings from the options.
        var bench: StoreBench {
            var bench = StoreBench()
            bench.redis = redis
            bench.concurrency = concurrency
            bench.pipelineConnections = pipelineConnections
            bench.window = window.value
            bench.sessions = sessions
            bench.attributeBytes = attributeBytes
            bench.loggedIn = loggedIn
            return bench
        }

        func run() throws {
            try bench.run(logger: try standardErrorLogger(label: "bench-store", level: logLevel))
        }
    }
}

/// `--duration` and `--warmup` of the load benchmarks (checked by the benchmarks' `validate()`).
struct MeasurementWindow: ParsableArguments {
    @Option(help: "Seconds to measure.")
    var duration: Double = 10

    @Option(help: "Seconds of unmeasured warm-up before the measurement.")
    var warmup: Double = 1

    var value: BenchWindow { BenchWindow(duration: duration, warmup: warmup) }
}
