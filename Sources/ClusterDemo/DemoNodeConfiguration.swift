import PostgresLocks
import ZooKeeperLocks
import SessionCore
import SessionRedis
import SessionReplication

/// Settings of a demo node.
public struct DemoNodeConfiguration: Sendable {
    public var nodeID: String
    public var host: String
    public var port: Int
    public var strategy: SessionStrategy
    public var expiry: SessionExpiry
    /// HMAC keys of signed session cookies (the first signs, all verify); none for unsigned.
    public var cookieSecrets: [[UInt8]]
    /// Threads for handlers; nil picks by strategy (0, on the event loops, for `local`, whose store never blocks).
    public var handlerThreads: Int?
    /// Where Redis is, for the `redis` strategy.
    public var redis: RedisConfiguration?
    /// Serialize each session's requests across the cluster with a distributed lock.
    public var exclusiveSessions = false
    /// The exclusive mode's lock service: `redis` (the node's Redis: `redis` strategy), `postgres`
    /// or `postgres-advisory` (`postgres`), `zookeeper` (`zookeeper`).
    public var lockBackend = LockBackend.redis
    /// How long a request waits for its session's lock (exclusive mode) before 503 session_busy.
    public var sessionLockWaitMillis = 5_000
    /// PostgreSQL, for the postgres lock backends.
    public var postgres: PostgresConfiguration?
    /// ZooKeeper, for the zookeeper lock backend.
    public var zookeeper: ZooKeeperConfiguration?
    /// Peers, secret and mode, for the `replicate` strategy (its node id is also the stores').
    public var replication: ReplicationConfiguration?
    /// The most sessions a node holds in memory (`local`, `replicate`); then new ones get 503.
    public var maxSessions = 1_000_000
    /// The cap on sessions per logged-in user, and what a login past it does; nil for none.
    public var principalLimit: PrincipalSessionLimit?
    /// How often the store's sweeper runs: expired sessions leave memory, and expiry events go
    /// out within two of these.
    public var sweepIntervalMillis = 30_000

    public init(
        nodeID: String, host: String = "127.0.0.1", port: Int = 9001, strategy: SessionStrategy = .local,
        expiry: SessionExpiry = SessionExpiry(), cookieSecrets: [[UInt8]] = [], handlerThreads: Int? = nil,
        redis: RedisConfiguration? = nil
    ) {
        self.redis = redis
        self.nodeID = nodeID
        self.host = host
        self.port = port
        self.strategy = strategy
        self.expiry = expiry
        self.cookieSecrets = cookieSecrets
        self.handlerThreads = handlerThreads
    }
}

/// Settings a demo node cannot work with.
public struct DemoNodeConfigurationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension DemoNodeConfiguration {
    /// Throws when a setting cannot work (the messages name the node's command-line options).
    public func validate() throws(DemoNodeConfigurationError) {
        guard (expiry.absoluteTimeoutMillis ?? 0) >= 0 else {
            throw DemoNodeConfigurationError("--absolute-timeout must not be negative")
        }
        if let handlerThreads, !(0...4096).contains(handlerThreads) {
            throw DemoNodeConfigurationError("--handler-threads must be 0...4096")
        }
        guard maxSessions > 0 else { throw DemoNodeConfigurationError("--max-sessions must be positive") }
        guard (50...3_600_000).contains(sweepIntervalMillis) else {
            throw DemoNodeConfigurationError("--sweep-interval-ms must be 50...3600000")
        }
        guard (0...600_000).contains(sessionLockWaitMillis) else {
            throw DemoNodeConfigurationError("--session-lock-wait-ms must be 0...600000")
        }
        if exclusiveSessions && lockBackend == .redis && strategy != .redis {
            throw DemoNodeConfigurationError(
                "--exclusive-sessions with --lock-backend redis needs --strategy redis (or --lock-backend postgres)")
        }
        if exclusiveSessions && (lockBackend == .postgres || lockBackend == .postgresAdvisory) && postgres == nil {
            throw DemoNodeConfigurationError("--lock-backend \(lockBackend.rawValue) needs --postgres")
        }
        if exclusiveSessions && lockBackend == .zookeeper && zookeeper == nil {
            throw DemoNodeConfigurationError("--lock-backend zookeeper needs --zookeeper")
        }
    }
}
