import ArgumentParser
import ClusterDemo
import Logging
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

@main
struct SessionClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "session-cluster",
        abstract: "HTTP sessions shared across a cluster of identical server instances.",
        subcommands: [
            Demo.self, Node.self, Proxy.self, Bench.self, BenchStore.self, BenchReplication.self, BenchLocks.self,
            LockWorkerCommand.self,
        ]
    )
}

/// Sends the process's logs to standard error and returns a logger at `level` (a
/// `Logger.Level` name; anything else is a usage error). Once per process.
func standardErrorLogger(label: String, level: String) throws -> Logger {
    guard let level = Logger.Level(rawValue: level) else { throw ValidationError("unknown log level '\(level)'") }
    return Logger.bootstrappingStandardError(label: label, level: level)
}

extension SessionClusterCommand {
    struct Node: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run one node of the cluster: the demo application with a session store.")

        @Option(help: "Port to listen on.")
        var port = 9001

        @Option(help: "This node's name, sent in X-Served-By.")
        var nodeId = "node-1"

        @Option(help: "Exit, as on SIGTERM, once the process with this PID is no longer the parent (set by `demo`).")
        var parentPid: Int32?

        @Option(
            help: ArgumentHelp(
                "On SIGTERM, stay a lame duck for up to this long before closing connections: /healthz answers 503 and every response closes its connection, until no connection is left open.",
                discussion:
                    "Give the balancer time to take the node out (about fall × interval of its health checks) so no kept-alive connection is closed while a request may be on its way. 0: close idle connections at once."
            ))
        var drainDelayMs = 5_000

        @OptionGroup var options: DemoNodeOptions

        func run() throws {
            guard (0...600_000).contains(drainDelayMs) else { throw ValidationError("--drain-delay-ms must be 0...600000") }
            let logger = try options.makeLogger(label: "node.\(nodeId)")
            if let parentPid { terminateWhenOrphaned(parent: parentPid) }
            let node = try DemoNode(configuration: try options.nodeConfiguration(nodeID: nodeId, port: port), logger: logger)
            try node.start()
            let signal = waitForTerminationSignal()
            logger.info("signal received, draining", metadata: ["signal": "\(signal)", "drain_delay_ms": "\(drainDelayMs)"])
            node.shutdown(drainDelayMillis: drainDelayMs)
        }
    }
}
