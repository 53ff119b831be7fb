import Logging
import SessionClusterAsync
import SessionReplication
import SessionCore
import SessionRedis
import ServiceLifecycle

/// The store of an example node, built from its options, with what it needs
/// around it: the Redis client or the replication node, the sweeper, the
/// exclusive-mode lock, readiness, and the executor for blocking calls.
public final class ExampleNodeStores: Sendable {
    /// Where sessions live (also the idempotency store).
    public let store: any SessionStore & IdempotencyStore
    /// The Redis client, with `--store redis`.
    public let redisClient: RedisClient?
    /// The replication node, with `--store replicate`.
    public let replication: ReplicationNode?
    /// The memory store, with `--store memory`.
    public let memory: MemorySessionStore?
    /// The lock of exclusive mode, with `--exclusive-sessions`.
    public let exclusiveLock: (any SessionRequestLock)?
    /// Where the blocking store calls run (`--store-threads` threads).
    public let executor: BlockingExecutor

    /// Builds the store. Nothing is contacted yet (a Redis node starts while
    /// Redis is down); the replication port is bound here.
    public init(options: ExampleNodeOptions, logger: Logger) throws {
        executor = BlockingExecutor(threads: options.storeThreads)
        var redisClient: RedisClient? = nil
        var replication: ReplicationNode? = nil
        var memory: MemorySessionStore? = nil
        var lock: (any SessionRequestLock)? = nil
        let principalLimit = try options.principalLimit()
        switch options.store {
        case .memory:
            let store = MemorySessionStore(
                expiry: options.expiry, maxSessions: options.maxSessions, principalLimit: principalLimit,
                nodeName: options.nodeId)
            memory = store
            self.store = store
        case .redis:
            let client = RedisClient(configuration: try options.redisConfiguration(), logger: logger)
            redisClient = client
            self.store = RedisSessionStore(
                client: client, expiry: options.expiry, principalLimit: principalLimit, nodeName: options.nodeId,
                logger: logger)
            if options.exclusiveSessions { lock = DistributedSessionLock.redis(client: client, logger: logger) }
        case .replicate:
            let settings = try options.replicationConfiguration()
            let store = ReplicatedSessionStore(
                node: settings.nodeID, expiry: options.expiry, maxSessions: options.maxSessions,
                principalLimit: principalLimit, nodeName: options.nodeId)
            replication = try ReplicationNode(store: store, configuration: settings, logger: logger)
            self.store = store
        }
        self.redisClient = redisClient
        self.replication = replication
        self.memory = memory
        exclusiveLock = lock
    }

    /// Starts the sweepers and the replication (which pulls the sessions from a peer).
    public func start() {
        memory?.startSweeper(intervalMillis: 30_000)
        replication?.store.startSweeper(intervalMillis: 30_000)
        replication?.start()
    }

    /// The same, as swift-service-lifecycle services for an application's `ServiceGroup` (put them
    /// before the HTTP server: the group stops them after it): the sweeper, the replication node,
    /// the Redis client. Use either these or `start()` and `shutdown()`.
    public var services: [any Service] {
        var services: [any Service] = []
        if let memory { services.append(SweeperService(store: memory, intervalMillis: 30_000)) }
        if let replication {
            services.append(SweeperService(store: replication.store, intervalMillis: 30_000))
            services.append(replication)
        }
        if let redisClient { services.append(redisClient) }
        return services
    }

    /// What keeps the node from serving, for `/healthz`: nil when ready.
    /// Blocking (PINGs Redis): call it on the executor.
    public func healthProblem() -> String? {
        if let replication, !replication.isReady { return replication.store.unavailableReason }
        if let redisClient, let problem = redisClient.healthProblem() { return problem }
        return nil
    }

    /// Stops replication, sweepers and the executor.
    public func shutdown() async {
        replication?.shutdown()
        replication?.store.stopSweeper()
        memory?.stopSweeper()
        redisClient?.close()
        try? await executor.shutdown()
    }
}
