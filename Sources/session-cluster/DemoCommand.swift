import ArgumentParser
import ClusterSupervisor
import Foundation
import Logging
import MiniHTTP
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
            guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown log level '\(logLevel)'") }
            guard Logger.Level(rawValue: nodeLogLevel) != nil else {
                throw ValidationError("unknown log level '\(nodeLogLevel)'")
            }
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            var logger = Logger(label: "demo")
            logger.logLevel = level

            var configuration = ClusterConfiguration(
                strategy: strategy, replicationMode: replicationMode, nodeCount: nodes, host: host, port: port,
                executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path, logDirectory: logDir,
                nodeLogLevel: nodeLogLevel)
            configuration.redisReplicas = redisReplicas
            configuration.redisSentinel = sentinel
            // The dashboard's "Cut off" control: every link (to a peer, or to the one redis-server) through a relay.
            configuration.relayedLinks =
                strategy == .replicate || (strategy == .redis && redisReplicas == 0 && !sentinel)
            // Beyond loopback anyone on the network reaches the control API: it then needs a token,
            // made here and shown once (the dashboard's address carries it in its #fragment, never sent).
            let token = ClusterConfiguration.isLoopback(host) && !controlToken ? nil : Self.randomToken()
            configuration.controlToken = token
            let supervisor: ClusterSupervisor
            do throws(SupervisorError) {
                supervisor = try ClusterSupervisor(configuration: configuration, logger: logger) { event in
                    print("[\(clock())] \(event)")
                    fflush(nil)
                }
                print("starting \(nodes) node\(nodes == 1 ? "" : "s") (strategy \(strategy.rawValue)) ...")
                fflush(nil)
                try supervisor.start()
            } catch {
                throw ValidationError(error.message)
            }
            let base = "http://\(host.contains(":") ? "[\(host)]" : host):\(supervisor.port)"
            let dashboard = token.map { "\(base)/#token=\($0)" } ?? "\(base)/"
            let auth = token.map { " -H 'Authorization: Bearer \($0)'" } ?? ""
            let nodeList = supervisor.nodePorts.map { "\($0.name) :\($0.port)" }.joined(separator: ", ")
            print("""

                SessionCluster demo — \(nodes) nodes, strategy '\(strategy.rawValue)'\(strategy == .replicate ? " (\(replicationMode))" : "")
                  dashboard  \(dashboard)
                  nodes      \(nodeList), logs in \(supervisor.logDirectoryPath)
                  try        curl -c /tmp/sc.jar -b /tmp/sc.jar -X POST \(base)/api/counter    (again: another node answers)
                             curl -X POST -H 'X-Cluster-Control: 1'\(auth) \(base)/_cluster/nodes/node-1/kill    (then count on)
                             curl\(auth) \(base)/_cluster/status
                  \(sentinel ? Self.sentinelExpectation : Self.expectation(strategy))
                Ctrl-C stops everything.

                """)
            fflush(nil)
            let signal = waitForTerminationSignal()
            let redis =
                switch strategy {
                case .redis: redisReplicas > 0 || sentinel ? " and the redis-servers" : " and redis-server"
                case .redisCluster: " and the Redis Cluster"
                case .replicate, .local: ""
                }
            print("[\(clock())] signal \(signal): stopping the balancer, the nodes\(redis)")
            fflush(nil)
            supervisor.shutdown()
            print("[\(clock())] stopped")
        }

        /// 128 random bits (the system's CSPRNG), in hex.
        static func randomToken() -> String {
            var generator = SystemRandomNumberGenerator()
            return (0..<4).map { _ in
                let word = String(generator.next() as UInt32, radix: 16)
                return String(repeating: "0", count: 8 - word.count) + word
            }.joined()
        }

        static let sentinelExpectation = """
            expect     sessions survive a killed node, and a killed Redis primary (redis-1) once the Sentinel \
            promoted its replica (a few seconds)
            """

        static func expectation(_ strategy: ClusterConfiguration.Strategy) -> String {
            switch strategy {
            case .replicate: "expect     sessions survive a killed node: every node holds a copy"
            case .redis: "expect     sessions survive a killed node: they live in Redis"
            case .redisCluster:
                "expect     sessions survive a killed node, and a killed Redis primary once its replica took over"
            case .local: "expect     sessions break: each node knows only its own (the control experiment)"
            }
        }
    }
}

/// Wall-clock time of day, HH:MM:SS.mmm.
private func clock() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    var parts = tm()
    var seconds = now.tv_sec
    localtime_r(&seconds, &parts)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    let millis = Int(now.tv_nsec / 1_000_000)
    return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(String(repeating: "0", count: 3 - String(millis).count))\(millis)"
}
