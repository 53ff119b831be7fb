import ArgumentParser
import Logging
import SessionReplication
import SessionCore
import SystemSupport
import SessionRedis

/// Where an example node keeps its sessions.
public enum ExampleStoreKind: String, Sendable, CaseIterable, ExpressibleByArgument {
    /// This process's memory (the baseline that breaks under round robin).
    case memory
    /// Redis: any node serves any session.
    case redis
    /// Every node's memory, each change replicated to its peers.
    case replicate
}

/// The command-line options of the example nodes (Hummingbird and Vapor),
/// named like `session-cluster node`'s. Secrets come from the environment as
/// for the core node: `SESSION_COOKIE_SECRET` (16+ bytes) signs cookies, or
/// `SESSION_COOKIE_SECRET_FILE` names a file with one key per line (the
/// first signs, all verify: rotation); `SESSION_CLUSTER_SECRET` (16+ bytes,
/// the same on every node) authenticates replication frames.
public struct ExampleNodeOptions: ParsableArguments, Sendable {
    /// Address to listen on.
    @Option(help: "Address to listen on.")
    public var host = "127.0.0.1"

    /// HTTP port.
    @Option(help: "HTTP port to listen on.")
    public var port = 9101

    /// This node's name, sent in `X-Served-By`.
    @Option(help: "This node's name, sent in X-Served-By and in every JSON answer.")
    public var nodeId = "node-1"

    /// Where sessions live.
    @Option(help: "Where sessions live: memory, redis or replicate.")
    public var store: ExampleStoreKind = .memory

    /// Redis URL for `--store redis`.
    @Option(help: "Redis for --store redis: redis://[[user]:password@]host:port/db.")
    public var redis = "redis://127.0.0.1:6379/0"

    /// A Redis Cluster instead of `--redis`.
    @Option(help: "A Redis Cluster instead of --redis: seeds host:port,host:port.")
    public var redisCluster: String?

    /// Redis connections per node.
    @Option(help: "Redis connections per node.")
    public var redisPoolSize = 32

    /// Redis connect and command timeout.
    @Option(help: "Redis connect and command timeout, in milliseconds.")
    public var redisTimeoutMs = 1000

    /// Serialize each session's requests across the cluster (Redis lock).
    @Flag(help: "Run each session's requests one at a time across the cluster (Redis lock; --store redis).")
    public var exclusiveSessions = false

    /// Replication addresses of every node.
    @Option(help: "Replication addresses of the cluster's nodes, host:port,... (--store replicate; may include this node's own).")
    public var peers: String?

    /// Port for peers.
    @Option(help: "Port to listen on for peers (--store replicate).")
    public var replicationPort = 7501

    /// sync or async replication.
    @Option(help: "sync: answer after every live peer acknowledged; async: answer at once (--store replicate).")
    public var replicationMode = "async"

    /// Sync-mode peer timeout.
    @Option(help: "Sync mode: how long to wait for a peer before marking it down, in milliseconds.")
    public var syncTimeoutMs = 100

    /// Replication secret; default `$SESSION_CLUSTER_SECRET`.
    @Option(help: "Key of the replication frames' HMAC (16+ bytes, the same on every node). Default: $SESSION_CLUSTER_SECRET.")
    public var clusterSecret: String?

    /// Idle session timeout.
    @Option(help: "Idle (sliding) session timeout, in seconds.")
    public var idleTimeout = 1800

    /// Absolute session timeout.
    @Option(help: "Absolute session timeout, in seconds (0 for none).")
    public var absoluteTimeout = 43_200

    /// Memory bound of the memory and replicated stores.
    @Option(help: "The most sessions a node holds in memory (memory, replicate); then new sessions get 503.")
    public var maxSessions = 1_000_000

    @Option(help: "The most sessions one logged-in user may hold (every node must have the same); default: no limit.")
    public var maxSessionsPerUser: Int?

    @Option(help: "With --max-sessions-per-user: evict-oldest (the user's least recently used session is logged out) or refuse (the new login gets 409).")
    public var whenExceeded = "evict-oldest"

    /// The per-user session limit of `--max-sessions-per-user` and `--when-exceeded`; nil for none.
    public func principalLimit() throws -> PrincipalSessionLimit? {
        do {
            return try PrincipalSessionLimit.fromOptions(maxSessionsPerUser: maxSessionsPerUser, whenExceeded: whenExceeded)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// Threads for blocking store calls.
    @Option(help: "Threads that run the blocking store calls (off the event loops).")
    public var storeThreads = 64

    /// Log level.
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel = "info"

    /// The lame-duck period on SIGTERM (see `LameDuck`).
    @Option(
        help: ArgumentHelp(
            "On SIGTERM (or SIGINT), stay a lame duck for this long before stopping: /healthz answers 503 draining, every response carries Connection: close, and the listener stays open.",
            discussion:
                "Give the balancer time to take the node out (about fall × interval of its health checks) so no kept-alive connection is closed while a request may be on its way. 0: stop at once. At most 600000."
        ))
    public var drainDelayMs = 5_000

    /// Options with their defaults.
    public init() {}

    /// Checks the options and the environment.
    public func validate() throws {
        guard (1...65535).contains(port) || port == 0 else { throw ValidationError("--port must be 0...65535") }
        guard !nodeId.isEmpty, nodeId.utf8.count <= 64 else { throw ValidationError("--node-id must be 1 to 64 bytes") }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be positive") }
        guard absoluteTimeout >= 0 else { throw ValidationError("--absolute-timeout must not be negative") }
        guard maxSessions > 0 else { throw ValidationError("--max-sessions must be positive") }
        _ = try principalLimit()
        guard (1...4096).contains(storeThreads) else { throw ValidationError("--store-threads must be 1...4096") }
        guard (0...600_000).contains(drainDelayMs) else { throw ValidationError("--drain-delay-ms must be 0...600000") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        if exclusiveSessions && store != .redis { throw ValidationError("--exclusive-sessions needs --store redis") }
        _ = try cookieSecrets()
    }

    /// The session expiry the options describe.
    public var expiry: SessionExpiry {
        SessionExpiry(
            idleTimeoutMillis: Int64(idleTimeout) * 1000,
            absoluteTimeoutMillis: absoluteTimeout == 0 ? nil : Int64(absoluteTimeout) * 1000)
    }

    /// The cookie signing keys (the first signs, all verify): `SESSION_COOKIE_SECRET`
    /// (one key) or the lines of the file `SESSION_COOKIE_SECRET_FILE` names;
    /// empty (unsigned cookies) when neither is set. Each key has 16+ bytes.
    public func cookieSecrets() throws -> [[UInt8]] {
        do { return try SecretFromEnvironment.cookieSigningKeys() } catch { throw ValidationError(error.message) }
    }

    /// The Redis settings of `--redis` (or `--redis-cluster`), `--redis-pool-size` and `--redis-timeout-ms`.
    public func redisConfiguration() throws -> RedisConfiguration {
        do {
            return try RedisConfiguration.fromCommandLine(
                url: redis, clusterSeeds: redisCluster, poolSize: redisPoolSize, timeoutMillis: redisTimeoutMs)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// The replication settings of `--peers`, `--replication-port`, `--replication-mode` and the cluster secret.
    public func replicationConfiguration() throws -> ReplicationConfiguration {
        do {
            return try ReplicationConfiguration.fromCommandLine(
                nodeName: nodeId, host: host, port: replicationPort, peers: peers, mode: replicationMode,
                syncTimeoutMillis: syncTimeoutMs, secret: clusterSecret)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// A logger at `--log-level`, to standard error (bootstraps swift-log once per process).
    public func makeLogger(label: String) -> Logger {
        Logger.bootstrappingStandardError(label: label, level: Logger.Level(rawValue: logLevel) ?? .info)
    }
}
