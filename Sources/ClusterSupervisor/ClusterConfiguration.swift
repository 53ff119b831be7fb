#if canImport(Glibc)
import Glibc
#endif
import Balancer

/// What `ClusterSupervisor` starts: N `session-cluster node` processes with one
/// session strategy, the balancer in front of them (in the supervisor's own
/// process) and, for the Redis strategies, a private redis-server or Redis Cluster.
public struct ClusterConfiguration: Sendable {
    /// Where the nodes keep sessions.
    public enum Strategy: String, CaseIterable, Sendable {
        /// Every node holds every session; changes go to the peers (no external service).
        case replicate
        /// Sessions live in a private redis-server the supervisor starts.
        case redis
        /// Sessions live in a private Redis Cluster the supervisor starts (`PrivateRedisCluster`):
        /// the nodes run `--strategy redis --redis-cluster SEEDS`.
        case redisCluster = "redis-cluster"
        /// Each node keeps its own sessions: under round robin, users lose them (the control).
        case local
    }

    public var strategy: Strategy
    /// `async` or `sync` (replicate only).
    public var replicationMode: String
    public var nodeCount: Int
    /// The balancer's address; port 0 picks a free one.
    public var host: String
    public var port: Int
    /// The `session-cluster` executable that runs the nodes.
    public var executable: String
    /// redis-server; looked up in the usual places when nil.
    public var redisServer: String?
    /// `redis-cluster`: primaries, replicas per primary and `--cluster-node-timeout` of the private cluster.
    public var redisClusterPrimaries = 3
    public var redisClusterReplicas = 1
    public var redisClusterNodeTimeoutMillis = 1_000
    /// `redis`: replicas of the private redis-server (0...3; `--replicaof` its primary). With none and no
    /// Sentinel the server is named `redis`, otherwise `redis-1`, `redis-2`...
    public var redisReplicas = 0
    /// `redis`: a Sentinel (`sentinel-1`) watching the primary, which promotes a replica when it dies; the
    /// nodes then find the master through it (`--redis-sentinel`). Needs `redisReplicas` ≥ 1.
    public var redisSentinel = false
    /// Logs of the nodes and Redis go here; a private temporary directory (removed at shutdown) when nil.
    public var logDirectory: String?
    public var nodeLogLevel: String
    /// Extra arguments for every node.
    public var extraNodeArguments: [String]
    /// Longest wait for a node to answer /healthz after it started.
    public var startTimeoutMillis: Int
    /// A rolling restart (`ClusterSupervisor.rollingRestart()`) stops when a restarted node is not
    /// running and `up` at the balancer within this time.
    public var rollingRestartTimeoutMillis = 30_000
    /// The balancer in front of the nodes (backends, host and port are filled in).
    public var balancer: BalancerConfiguration
    /// Bearer token the control API (`ControlAPI`) requires; needed when `host` is not a loopback
    /// address, since anyone on the network then reaches it.
    public var controlToken: String?
    /// `replicate`: every replication link (node A → node B) goes through a `LinkRelay`, so
    /// `ClusterSupervisor.partition(_:)` can cut the cluster in groups.
    public var relayedLinks = false

    /// A node's lame-duck period on SIGTERM (`--drain-delay-ms`): long enough for the balancer's
    /// health checks to take it out (fall × interval, plus a check's timeout and a margin).
    public var nodeDrainDelayMillis: Int {
        guard let check = balancer.healthCheck else { return 1_000 }
        return check.fall * check.intervalMillis + check.timeoutMillis + 500
    }

    public init(
        strategy: Strategy = .replicate, replicationMode: String = "async", nodeCount: Int = 3, host: String = "127.0.0.1",
        port: Int = 8080, executable: String, redisServer: String? = nil, logDirectory: String? = nil,
        nodeLogLevel: String = "warning", extraNodeArguments: [String] = [], startTimeoutMillis: Int = 30_000
    ) {
        self.strategy = strategy
        self.replicationMode = replicationMode
        self.nodeCount = nodeCount
        self.host = host
        self.port = port
        self.executable = executable
        self.redisServer = redisServer
        self.logDirectory = logDirectory
        self.nodeLogLevel = nodeLogLevel
        self.extraNodeArguments = extraNodeArguments
        self.startTimeoutMillis = startTimeoutMillis
        var balancer = BalancerConfiguration(host: host, port: port, backends: [], eventLoops: 1)
        // Quick to notice a stopped or dead node, so the demo shows failover in about a second.
        // A node that comes back gets its full share over one second (slow start).
        balancer.healthCheck = HealthCheckConfiguration(
            intervalMillis: 250, timeoutMillis: 250, rise: 2, fall: 2, slowStartMillis: 1_000)
        balancer.backendConnectTimeoutMillis = 500
        balancer.backendResponseTimeoutMillis = 2_000
        balancer.ejectBaseMillis = 500
        balancer.shutdownGraceMillis = 2_000
        self.balancer = balancer
    }

    /// 127.0.0.0/8 or ::1.
    public static func isLoopback(_ host: String) -> Bool {
        host == "::1" || host.hasPrefix("127.")
    }

    func validate() throws(SupervisorError) {
        guard (1...16).contains(nodeCount) else { throw SupervisorError("--nodes must be 1...16") }
        guard replicationMode == "async" || replicationMode == "sync" else {
            throw SupervisorError("--replication-mode must be async or sync")
        }
        guard (0...65535).contains(port) else { throw SupervisorError("--port must be 0...65535") }
        if controlToken == nil && !Self.isLoopback(host) {
            throw SupervisorError("listening on \(host), beyond loopback: the control API needs a token (controlToken)")
        }
        if let token = controlToken, token.utf8.count < 16 {
            throw SupervisorError("the control token must be at least 16 characters")
        }
        guard access(executable, X_OK) == 0 else { throw SupervisorError("cannot run \(executable)") }
        guard (0...3).contains(redisReplicas) else { throw SupervisorError("--redis-replicas must be 0...3") }
        if strategy != .redis && (redisReplicas != 0 || redisSentinel) {
            throw SupervisorError(
                "--redis-replicas and --sentinel go with --strategy redis (not \(strategy.rawValue))"
                    + (strategy == .redisCluster ? "; a Redis Cluster has its own replicas and fails over by itself" : ""))
        }
        if relayedLinks && (strategy == .local || strategy == .redisCluster || redisReplicas > 0 || redisSentinel) {
            throw SupervisorError(
                "relayed links (partitions) are for --strategy replicate and for redis with one server; "
                    + (strategy == .local ? "local nodes have no links" : "replicas, a Sentinel or a cluster are not relayed yet"))
        }
        if redisSentinel && redisReplicas == 0 {
            throw SupervisorError("--sentinel needs a replica to promote: add --redis-replicas 1 (or more)")
        }
    }
}
