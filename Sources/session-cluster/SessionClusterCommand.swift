import ArgumentParser
import ClusterDemo
import Logging
import MiniHTTP
import SessionCore
import SessionRedis
import SessionReplication
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

@main
struct SessionClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "session-cluster",
        abstract: "HTTP sessions shared across a cluster of identical server instances.",
        subcommands: [Demo.self, Node.self, Proxy.self, Bench.self, BenchStore.self, BenchReplication.self]
    )
}

/// Options every server subcommand shares.
struct NodeOptions: ParsableArguments {
    @Option(help: "Address to listen on (numeric IPv4/IPv6).")
    var host = "127.0.0.1"

    @Option(help: "Where sessions live: \(SessionStrategy.allCases.map(\.rawValue).joined(separator: ", ")).")
    var strategy = "local"

    @Option(help: "Idle (sliding) session timeout, in seconds.")
    var idleTimeout = 1800

    @Option(help: "Absolute session timeout, in seconds (0 for none).")
    var absoluteTimeout = 43_200

    @Option(help: "Handler threads (0: run handlers on the event loops). Default: by strategy.")
    var handlerThreads: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Option(help: "Redis for --strategy redis: redis://[[user]:password@]host:port/db.")
    var redis = "redis://127.0.0.1:6379/0"

    @Option(help: "Sentinels (host:port,...) to find the Redis master through, instead of --redis's host.")
    var redisSentinel: String?

    @Option(help: "The master's name at the sentinels.")
    var redisMaster = "mymaster"

    @Option(help: ArgumentHelp(
        "A Redis Cluster instead of --redis: seeds host:port,host:port (or redis://[[user]:password@]host:port,host:port).",
        valueName: "seeds"))
    var redisCluster: String?

    @Option(help: "Replicas that must acknowledge each session write (Redis WAIT) before it counts as done; 0: asynchronous.")
    var redisWaitReplicas = 0

    @Flag(help: "Run each session's requests one at a time across the cluster (Redis lock; --strategy redis).")
    var exclusiveSessions = false

    @Option(help: "Redis connections per node.")
    var redisPoolSize = 32

    @Option(help: "The most sessions a node holds in memory (local, replicate); then new sessions get 503.")
    var maxSessions = 1_000_000

    @Option(help: "Replication addresses of the cluster's nodes, host:port,... (--strategy replicate; may include this node's own).")
    var peers: String?

    @Option(help: "Port to listen on for peers (--strategy replicate).")
    var replicationPort = 7401

    @Option(help: "The addresses peers may announce in their hello, host:port,... (default: --peers). Set it when --peers names relays or proxies in front of the peers.")
    var acceptPeers: String?

    @Option(help: "sync: answer after every live peer acknowledged; async: answer at once (--strategy replicate).")
    var replicationMode = "async"

    @Option(help: "Sync mode: how long to wait for a peer before marking it down, in milliseconds.")
    var syncTimeoutMs = 100

    @Option(help: "When a request's unseen Idempotency-Key is first looked up on the peers: always, when-peer-in-doubt or never. Default: always in sync mode, never in async mode.")
    var keyLookups: String?

    @Option(help: "Sync mode: majority (a write fewer than a majority of the nodes acknowledged is refused with 503 and the node rejoins; peers silent for a second are fenced) or none (go on with whoever answers). Default: majority in sync mode.")
    var quorum: String?

    @Option(help: "The cluster secret every node shares (16+ bytes): peers authenticate with it and derive their encryption keys from it. Visible in `ps`: prefer $SESSION_CLUSTER_SECRET or $SESSION_CLUSTER_SECRET_FILE.")
    var clusterSecret: String?

    @Option(help: "Redis connect and command timeout, in milliseconds.")
    var redisTimeoutMs = 1000

    func redisConfiguration() throws -> RedisConfiguration {
        do {
            return try RedisConfiguration.fromCommandLine(
                url: redis, clusterSeeds: redisCluster, sentinels: redisSentinel, masterName: redisMaster,
                poolSize: redisPoolSize, timeoutMillis: redisTimeoutMs, waitReplicas: redisWaitReplicas)
        } catch {
            throw ValidationError(error.message)
        }
    }

    func replicationConfiguration(nodeID: String) throws -> ReplicationConfiguration {
        do {
            return try ReplicationConfiguration.fromCommandLine(
                nodeName: nodeID, host: host, port: replicationPort, peers: peers, mode: replicationMode,
                syncTimeoutMillis: syncTimeoutMs, secret: clusterSecret, keyLookups: keyLookups, acceptPeers: acceptPeers,
                quorum: quorum)
        } catch {
            throw ValidationError(error.message)
        }
    }

    func nodeConfiguration(nodeID: String, port: Int) throws -> DemoNodeConfiguration {
        guard let strategy = SessionStrategy(rawValue: strategy) else {
            throw ValidationError(
                "unknown strategy '\(self.strategy)'; available: "
                    + SessionStrategy.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let secrets: [[UInt8]]  // from the environment, never argv
        do { secrets = try SecretFromEnvironment.cookieSigningKeys() } catch { throw ValidationError(error.message) }
        var configuration = DemoNodeConfiguration(
            nodeID: nodeID, host: host, port: port, strategy: strategy,
            expiry: SessionExpiry(
                idleTimeoutMillis: Int64(idleTimeout) * 1000,
                absoluteTimeoutMillis: absoluteTimeout == 0 ? nil : Int64(absoluteTimeout) * 1000),
            cookieSecrets: secrets, handlerThreads: handlerThreads,
            redis: strategy == .redis ? try redisConfiguration() : nil)
        configuration.exclusiveSessions = exclusiveSessions
        configuration.maxSessions = maxSessions
        do { try configuration.validate() } catch { throw ValidationError(error.message) }
        if strategy == .replicate { configuration.replication = try replicationConfiguration(nodeID: nodeID) }
        return configuration
    }

    func makeLogger(label: String) throws -> Logger { try standardErrorLogger(label: label, level: logLevel) }
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

        @OptionGroup var options: NodeOptions

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
