import ArgumentParser
import ClusterLocks
import Logging
import PostgresLocks
import ZooKeeperLocks
import SessionCore
import SessionRedis
import SessionReplication
import SystemSupport

/// The command-line options of a demo node (`session-cluster node`), and
/// their mapping to a `DemoNodeConfiguration`, with errors that name the option.
public struct DemoNodeOptions: ParsableArguments {
    /// Options with their defaults.
    public init() {}

    @Option(help: "Address to listen on (numeric IPv4/IPv6).")
    public var host = "127.0.0.1"

    @Option(help: "Where sessions live: \(SessionStrategy.allCases.map(\.rawValue).joined(separator: ", ")).")
    public var strategy = "local"

    @Option(help: "Idle (sliding) session timeout, in seconds.")
    public var idleTimeout = 1800

    @Option(help: "Absolute session timeout, in seconds (0 for none).")
    public var absoluteTimeout = 43_200

    @Option(help: "Handler threads (0: run handlers on the event loops). Default: by strategy.")
    public var handlerThreads: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel = "info"

    @Option(help: "Redis for --strategy redis: redis://[[user]:password@]host:port/db.")
    public var redis = "redis://127.0.0.1:6379/0"

    @Option(help: "Sentinels (host:port,...) to find the Redis master through, instead of --redis's host.")
    public var redisSentinel: String?

    @Option(help: "The master's name at the sentinels.")
    public var redisMaster = "mymaster"

    @Option(help: ArgumentHelp(
        "A Redis Cluster instead of --redis: seeds host:port,host:port (or redis://[[user]:password@]host:port,host:port).",
        valueName: "seeds"))
    public var redisCluster: String?

    @Option(help: "Replicas that must acknowledge each session write (Redis WAIT) before it counts as done; 0: asynchronous.")
    public var redisWaitReplicas = 0

    @Flag(help: "Run each session's requests one at a time across the cluster (a distributed lock: --lock-backend).")
    public var exclusiveSessions = false

    @Option(help: "The lock service of --exclusive-sessions: \(LockBackend.names) (redis: the node's Redis, --strategy redis).")
    public var lockBackend = "redis"

    @Option(help: "With --exclusive-sessions: how long a request waits for its session's lock before 503 session_busy, in milliseconds.")
    public var sessionLockWaitMs = 5_000

    @Option(help: "PostgreSQL for the postgres lock backends: postgresql://user[:password]@host:port/database.")
    public var postgres: String?

    @Option(help: "ZooKeeper for --lock-backend zookeeper: host:port,host:port,...")
    public var zookeeper: String?

    @Option(help: "Redis connections per node.")
    public var redisPoolSize = 32

    @Option(help: "The most sessions a node holds in memory (local, replicate); then new sessions get 503.")
    public var maxSessions = 1_000_000

    @Option(help: "The most sessions one logged-in user may hold (every node must have the same); default: no limit.")
    public var maxSessionsPerUser: Int?

    @Option(help: "With --max-sessions-per-user: evict-oldest (the least recently used session of the user is logged out) or refuse (the new login gets 409).")
    public var whenExceeded = "evict-oldest"

    @Option(help: "How often the store's sweeper runs, in milliseconds: expired sessions are dropped and their events sent within two of these.")
    public var sweepIntervalMs = 30_000

    @Option(help: "Replication addresses of the cluster's nodes, host:port,... (--strategy replicate; may include this node's own).")
    public var peers: String?

    @Option(help: "Port to listen on for peers (--strategy replicate).")
    public var replicationPort = 7401

    @Option(help: "The addresses peers may announce in their hello, host:port,... (default: --peers). Set it when --peers names relays or proxies in front of the peers.")
    public var acceptPeers: String?

    @Option(help: "sync: answer after every live peer acknowledged; async: answer at once (--strategy replicate).")
    public var replicationMode = "async"

    @Option(help: "Sync mode: how long to wait for a peer before marking it down, in milliseconds.")
    public var syncTimeoutMs = 100

    @Option(help: "When a request's unseen Idempotency-Key is first looked up on the peers: always, when-peer-in-doubt or never. Default: always in sync mode, never in async mode.")
    public var keyLookups: String?

    @Option(help: "Sync mode: majority (a write fewer than a majority of the nodes acknowledged is refused with 503 and the node rejoins; peers silent for a second are fenced) or none (go on with whoever answers). Default: majority in sync mode.")
    public var quorum: String?

    @Option(help: "Sync mode with a majority quorum: how long a peer may acknowledge nothing before it is declared dead and fenced, in milliseconds.")
    public var fenceAfterMs = 1_000

    @Option(help: "The cluster secret every node shares (16+ bytes): peers authenticate with it and derive their encryption keys from it. Visible in `ps`: prefer $SESSION_CLUSTER_SECRET or $SESSION_CLUSTER_SECRET_FILE.")
    public var clusterSecret: String?

    @Option(help: "Redis connect and command timeout, in milliseconds.")
    public var redisTimeoutMs = 1000

    /// Checks what the settings' own types would trap on.
    public func validate() throws {
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be positive") }
        guard absoluteTimeout >= 0 else { throw ValidationError("--absolute-timeout must not be negative") }
    }

    /// The Redis settings of the `--redis*` options.
    public func redisConfiguration() throws -> RedisConfiguration {
        do {
            return try RedisConfiguration.fromCommandLine(
                url: redis, clusterSeeds: redisCluster, sentinels: redisSentinel, masterName: redisMaster,
                poolSize: redisPoolSize, timeoutMillis: redisTimeoutMs, waitReplicas: redisWaitReplicas)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// The replication settings of `--peers`, `--replication-*`, the quorum and the cluster secret.
    public func replicationConfiguration(nodeID: String) throws -> ReplicationConfiguration {
        do {
            var configuration = try ReplicationConfiguration.fromCommandLine(
                nodeName: nodeID, host: host, port: replicationPort, peers: peers, mode: replicationMode,
                syncTimeoutMillis: syncTimeoutMs, secret: clusterSecret, keyLookups: keyLookups, acceptPeers: acceptPeers,
                quorum: quorum)
            configuration.fenceAfterMillis = fenceAfterMs
            try configuration.validate()
            return configuration
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// The node's settings, checked; errors are `ValidationError`s naming the option.
    public func nodeConfiguration(nodeID: String, port: Int) throws -> DemoNodeConfiguration {
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
        do { configuration.lockBackend = try LockBackend.named(lockBackend) } catch { throw ValidationError(error.message) }
        configuration.postgres = postgres.map { PostgresConfiguration(url: $0) }
        configuration.sessionLockWaitMillis = sessionLockWaitMs
        configuration.zookeeper = zookeeper.map { ZooKeeperConfiguration(connect: $0) }
        configuration.maxSessions = maxSessions
        configuration.principalLimit = try principalLimit()
        configuration.sweepIntervalMillis = sweepIntervalMs
        do { try configuration.validate() } catch { throw ValidationError(error.message) }
        if strategy == .replicate { configuration.replication = try replicationConfiguration(nodeID: nodeID) }
        return configuration
    }

    /// The `--max-sessions-per-user` and `--when-exceeded` limit, checked; nil without one.
    public func principalLimit() throws -> PrincipalSessionLimit? {
        try Self.principalLimit(maxSessionsPerUser: maxSessionsPerUser, whenExceeded: whenExceeded)
    }

    /// The limit of a `--max-sessions-per-user` and a `--when-exceeded`, checked; nil without one.
    public static func principalLimit(maxSessionsPerUser: Int?, whenExceeded: String) throws -> PrincipalSessionLimit? {
        do {
            return try PrincipalSessionLimit.fromOptions(maxSessionsPerUser: maxSessionsPerUser, whenExceeded: whenExceeded)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// A logger at `--log-level`, to standard error (bootstraps swift-log once per process).
    public func makeLogger(label: String) throws -> Logger {
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown log level '\(logLevel)'") }
        return Logger.bootstrappingStandardError(label: label, level: level)
    }
}
