import ArgumentParser
import ClusterDemo
import ClusterSupervisor
import Foundation
import Logging
import SystemSupport

extension SessionClusterCommand {
    /// `session-cluster demo`: a local cluster behind the balancer, with a dashboard.
    struct Demo: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the cluster demo: nodes behind the balancer, with a dashboard at http://127.0.0.1:8080/.",
            discussion: """
                Starts --nodes node processes with one session strategy, the round-robin balancer in \
                front of them and, for --strategy redis, a private redis-server on a free loopback port \
                (for --strategy redis-cluster, a private Redis Cluster: 3 primaries, 1 replica each; \
                --strategy redis --redis-replicas 1 --sentinel gives the redis-server a replica and a \
                Sentinel, which promotes the replica when the primary dies, and the nodes follow it). \
                The dashboard (served by the nodes through the balancer) shows your session and the \
                cluster, and kills, stops, resumes and restarts nodes, and kills and restarts the \
                redis-servers; so does the control API under /_cluster/. Ctrl-C or SIGTERM stops \
                everything the demo started.
                """)

        @Option(help: "Where sessions live: replicate (peers copy each change; needs nothing), redis (a private redis-server), redis-cluster (a private Redis Cluster, 3 primaries and 3 replicas), local (each node its own: sessions break under round robin).")
        var strategy = "replicate"

        @Option(help: "--strategy redis: replicas of the private redis-server (0...3); they are only copies unless --sentinel is given.")
        var redisReplicas = 0

        @Flag(help: "--strategy redis: start a Redis Sentinel that promotes a replica when the primary dies; the nodes find the master through it (needs --redis-replicas 1 or more).")
        var sentinel = false

        @Option(help: "Number of nodes (1...16).")
        var nodes = 3

        @Option(help: "The balancer's port (0: a free one).")
        var port = 8080

        @Option(help: "The balancer's address (numeric). Beyond loopback the control API needs a token (see --control-token).")
        var host = "127.0.0.1"

        @Flag(help: "Require a bearer token on the control API (/_cluster/) also on loopback, e.g. on a machine shared with other users; it is always required beyond loopback. The token is made at start and printed with the dashboard's address.")
        var controlToken = false

        @Option(help: "--strategy replicate: async (answer at once) or sync (answer after the peers acknowledged).")
        var replicationMode = "async"

        @Option(help: "The most sessions one logged-in user may hold; default: no limit.")
        var maxSessionsPerUser: Int?

        @Option(help: "With --max-sessions-per-user: evict-oldest (the user's least recently used session is logged out) or refuse (the new login gets 409).")
        var whenExceeded = "evict-oldest"

        @Option(help: "Keep the nodes' logs here (default: a temporary directory removed at exit).")
        var logDir: String?

        @Option(help: "The nodes' log level.")
        var nodeLogLevel = "warning"

        @Option(help: "The demo's own log level.")
        var logLevel = "notice"

        func run() throws {
            guard let strategy = ClusterConfiguration.Strategy(rawValue: strategy) else {
                throw ValidationError(
                    "unknown strategy '\(self.strategy)'; available: "
                        + ClusterConfiguration.Strategy.allCases.map(\.rawValue).joined(separator: ", "))
            }
            guard Logger.Level(rawValue: nodeLogLevel) != nil else {
                throw ValidationError("unknown log level '\(nodeLogLevel)'")
            }
            let logger = try standardErrorLogger(label: "demo", level: logLevel)

            var configuration = ClusterConfiguration(
                strategy: strategy, replicationMode: replicationMode, nodeCount: nodes, host: host, port: port,
                executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path, logDirectory: logDir,
                nodeLogLevel: nodeLogLevel)
            if try DemoNodeOptions.principalLimit(maxSessionsPerUser: maxSessionsPerUser, whenExceeded: whenExceeded) != nil,
                let maxSessionsPerUser
            {
                configuration.extraNodeArguments += [
                    "--max-sessions-per-user", "\(maxSessionsPerUser)", "--when-exceeded", whenExceeded,
                ]
            }
            configuration.redisReplicas = redisReplicas
            configuration.redisSentinel = sentinel
            // The dashboard's "Cut off" control: every link (to a peer, or to the one redis-server) through a relay.
            configuration.relayedLinks =
                strategy == .replicate || (strategy == .redis && redisReplicas == 0 && !sentinel)
            // Beyond loopback anyone on the network reaches the control API: it then needs a token,
            // made here and shown once (the dashboard's address carries it in its #fragment, never sent).
            let token = ClusterConfiguration.isLoopback(host) && !controlToken ? nil : secureRandomToken(byteCount: 16)
            configuration.controlToken = token
            do throws(SupervisorError) {
                try ClusterSupervisor.runInForeground(configuration: configuration, logger: logger)
            } catch {
                throw ValidationError(error.message)
            }
        }
    }
}
