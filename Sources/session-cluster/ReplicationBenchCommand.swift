import ArgumentParser
import Benchmarks
import Logging

#if canImport(Glibc)
import Glibc
#endif

extension SessionClusterCommand {
    /// The replicate strategy's numbers (issue 4): replication lag, requests/s
    /// through three nodes, and helpers for the restart-to-ready measurement
    /// that scripts/bench-replication.sh orchestrates.
    struct BenchReplication: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-replication",
            abstract: "Measure the replicate strategy: replication lag, requests/s through nodes, restart helpers.",
            discussion: """
                --lag: in-process, over loopback TCP: --lag-nodes ReplicationNodes (async mode, real \
                sockets on 127.0.0.1) in this process; --samples writes on the first node, one every \
                --interval-us at most, each timed from before `apply` on node A until node B's copy \
                shows it (and until every peer's does). Prints p50/p99/p99.9/max in microseconds.

                --throughput --nodes URL,URL,URL: --connections simulated users, each with its own \
                cookies and one keep-alive connection per node; request k of a user goes to node \
                k % nodes. POST /api/counter flat-out for --warmup + --duration seconds; every \
                response's count is checked against the user's number of POSTs, and at the end every \
                node's copy of every session (GET /api/session, no read token) must show all of them.

                --populate URL: creates --sessions sessions (one POST /api/counter without a cookie \
                each) over --connections keep-alive connections; the first one gets --sample-posts \
                POSTs in all and its cookie is printed, to check a restarted node with.

                --wait-ready URL: polls URL/healthz every 2 ms; prints the milliseconds until 200, \
                counted from --since-epoch-us (e.g. ${EPOCHREALTIME/./} taken just before starting \
                the node) or from its own start.

                Each measurement prints a JSON line (for scripts) and a line for people.
                """)

        // MARK: --lag

        @Flag(help: "Measure replication lag in-process, over loopback TCP.")
        var lag = false

        @Option(help: "Lag: measured writes.")
        var samples = 20_000

        @Option(help: "Lag: unmeasured writes first.")
        var warmupSamples = 2_000

        @Option(name: .customLong("interval-us"), help: "Lag: one write every this many microseconds at most.")
        var intervalMicros = 100

        @Option(help: "Lag: replication nodes in the process (2 or 3).")
        var lagNodes = 3

        // MARK: --throughput

        @Flag(help: "Measure POST /api/counter requests/s round robin through --nodes.")
        var throughput = false

        @Option(help: "Throughput: the nodes' base URLs, http://host:port,...")
        var nodes: String?

        @OptionGroup var window: MeasurementWindow

        @Option(help: "Throughput: simulated users (one thread each); populate: connections.")
        var connections = 32

        // MARK: --populate, --wait-ready

        @Option(help: "Create --sessions sessions through this node (base URL).")
        var populate: String?

        @Option(help: "Populate: sessions to create.")
        var sessions = 10_000

        @Option(help: "Populate: POSTs in all for the first session (the sample).")
        var samplePosts = 5

        @Option(help: "Poll this node's (base URL) /healthz every 2 ms until 200.")
        var waitReady: String?

        @Option(name: .customLong("since-epoch-us"), help: "Wait-ready: count from this instant (µs since 1970).")
        var sinceEpochMicros: Int64?

        @Option(help: "Wait-ready: give up after this many seconds.")
        var timeout: Double = 60

        @Option(help: "Log level of the in-process nodes: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "warning"

        /// The benchmark's settings from the options.
        var bench: ReplicationBench {
            var bench = ReplicationBench()
            bench.samples = samples
            bench.warmupSamples = warmupSamples
            bench.intervalMicros = intervalMicros
            bench.lagNodes = lagNodes
            bench.window = window.value
            bench.connections = connections
            bench.sessions = sessions
            bench.samplePosts = samplePosts
            bench.sinceEpochMicros = sinceEpochMicros
            bench.timeout = timeout
            return bench
        }

        func validate() throws {
            guard lag || throughput || populate != nil || waitReady != nil else {
                throw ValidationError("choose at least one of --lag, --throughput, --populate URL, --wait-ready URL")
            }
            guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
            do {
                try bench.validate()
                if throughput {
                    guard let nodes, !(try BenchEndpoint.list(nodes)).isEmpty else {
                        throw BenchFailure("--throughput needs --nodes URL,URL,...")
                    }
                }
                if let populate { _ = try BenchEndpoint(populate) }
                if let waitReady { _ = try BenchEndpoint(waitReady) }
            } catch let failure as BenchFailure {
                throw ValidationError(failure.description)
            }
        }

        func run() throws {
            let logger = try standardErrorLogger(label: "bench-replication", level: logLevel)
            let bench = bench
            if lag { try bench.measureLag(logger: logger) }
            if throughput, let nodes { try bench.measureThroughput(endpoints: try BenchEndpoint.list(nodes)) }
            if let populate { try bench.populateSessions(endpoint: try BenchEndpoint(populate)) }
            if let waitReady { try bench.waitUntilReady(endpoint: try BenchEndpoint(waitReady)) }
        }
    }
}
