import Foundation
import SessionReplication
import SessionCore
import SessionRedis
import SystemSupport
import TestSupport

/// The stores the adapters are tested against, each torn down by `shutdown()`.
public final class TestStores: Sendable {
    /// A label for test names.
    public let name: String
    /// One store per node: one for memory and Redis (every node reads the
    /// same state), two for the replicated cluster (node a, node b).
    public let nodes: [any SessionStore & IdempotencyStore]
    private let teardown: @Sendable () -> Void

    private init(name: String, nodes: [any SessionStore & IdempotencyStore], teardown: @escaping @Sendable () -> Void) {
        self.name = name
        self.nodes = nodes
        self.teardown = teardown
    }

    /// Stops what the stores started (replication nodes, redis-server, sweepers).
    public func shutdown() { teardown() }

    /// A memory store.
    public static func memory(expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system) -> TestStores {
        TestStores(name: "memory", nodes: [MemorySessionStore(expiry: expiry, clock: clock)], teardown: {})
    }

    /// Two `RedisSessionStore`s (two "nodes", each with its own client) over
    /// one Redis: `$REDIS_URL` or a private redis-server, stopped by `shutdown()`.
    /// Each call uses its own key prefix, so tests never see each other's sessions.
    /// (Redis keeps time itself: its sessions expire in real time.)
    public static func redis(expiry: SessionExpiry = SessionExpiry()) throws -> TestStores {
        let redis = try RedisServerProcess.fromEnvironmentOrPrivate()
        return try redisStores(name: "redis", configuration: try RedisConfiguration(url: redis.url), expiry: expiry) {
            redis.server?.stop()
        }
    }

    /// The seeds of the Redis Cluster the tests may use (`$REDIS_CLUSTER_SEEDS`), if any.
    public static var redisClusterSeeds: String? {
        ProcessInfo.processInfo.environment["REDIS_CLUSTER_SEEDS"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Two `RedisSessionStore`s over the Redis Cluster of `$REDIS_CLUSTER_SEEDS`.
    public static func redisCluster(expiry: SessionExpiry = SessionExpiry()) throws -> TestStores {
        guard let seeds = redisClusterSeeds else {
            throw TestError("REDIS_CLUSTER_SEEDS is not set (scripts/test.sh starts a Redis Cluster and sets it)")
        }
        return try redisStores(name: "redisCluster", configuration: try RedisConfiguration(clusterSeeds: seeds), expiry: expiry) {}
    }

    /// Two stores, each with a client of its own, under one new key prefix.
    private static func redisStores(
        name: String, configuration: RedisConfiguration, expiry: SessionExpiry, stop: @escaping @Sendable () -> Void
    ) throws -> TestStores {
        let logger = quietLogger()
        let prefix = "test-\(UUID().uuidString.prefix(8)):"
        let clients = (0..<2).map { _ in RedisClient(configuration: configuration, logger: logger) }
        let stores = clients.map {
            RedisSessionStore(client: $0, expiry: expiry, keyPrefix: prefix, logger: logger)
        }
        return TestStores(name: name, nodes: stores) {
            for client in clients { client.close() }
            stop()
        }
    }

    /// Two `ReplicatedSessionStore`s, each behind its own `ReplicationNode`,
    /// replicating to each other over loopback in sync mode; ready and
    /// connected when this returns.
    public static func replicated(
        expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        mode: ReplicationConfiguration.Mode = .sync
    ) throws -> TestStores {
        let secret = Array("integration-tests-cluster-secret".utf8)
        var lastError: any Error = TestError("no free loopback ports")
        for _ in 0..<5 {  // a port picked free may be taken before it is bound again
            let ports = try (0..<2).map { _ in try Sockets.freeLoopbackPort() }
            guard ports[0] != ports[1] else { continue }
            let addresses = ports.map { PeerAddress(host: "127.0.0.1", port: $0) }
            var nodes: [ReplicationNode] = []
            do {
                for (i, name) in ["a", "b"].enumerated() {
                    let configuration = ReplicationConfiguration(
                        nodeName: name, host: "127.0.0.1", port: ports[i], peers: addresses, secret: secret, mode: mode,
                        syncTimeoutMillis: 2_000, joinTimeoutMillis: 300, connectTimeoutMillis: 500,
                        reconnectBackoffMillis: (10, 200))
                    let store = ReplicatedSessionStore(node: configuration.nodeID, expiry: expiry, clock: clock)
                    nodes.append(try ReplicationNode(store: store, configuration: configuration, logger: quietLogger()))
                }
            } catch {
                for node in nodes { node.shutdown() }
                lastError = error
                continue
            }
            for node in nodes { node.start() }
            let settled = waitUntil(timeout: 10) {
                nodes.allSatisfy { node in
                    node.isReady && node.peers.count == 1 && node.peers.allSatisfy { $0.connected && !$0.lagging }
                }
            }
            guard settled else {
                for node in nodes { node.shutdown() }
                throw TestError("the two replication nodes did not connect")
            }
            let started = nodes
            return TestStores(name: "replicated", nodes: started.map(\.store)) {
                for node in started { node.shutdown() }
            }
        }
        throw lastError
    }
}
