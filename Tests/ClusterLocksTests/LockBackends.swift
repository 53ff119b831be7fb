import ClusterDemo
import ClusterLocks
import Foundation
import LockConformance
import SessionRedis
import TestSupport

/// The lock services scripts/test.sh starts: REDIS_URL, REDIS_CLUSTER_SEEDS, POSTGRES_URL, ZOOKEEPER_CONNECT.
enum LockBackends {
    static let redisURL = ProcessInfo.processInfo.environment["REDIS_URL"]
    static let postgresURL = ProcessInfo.processInfo.environment["POSTGRES_URL"]
    static let redisClusterSeeds = ProcessInfo.processInfo.environment["REDIS_CLUSTER_SEEDS"]
    static let zookeeperConnect = ProcessInfo.processInfo.environment["ZOOKEEPER_CONNECT"]

    /// Whether `backend`'s service runs here.
    static func available(_ backend: LockBackend) -> Bool {
        switch backend {
        case .redis: redisURL != nil
        case .postgres, .postgresAdvisory: postgresURL != nil
        case .zookeeper: zookeeperConnect != nil
        }
    }

    /// Where those services are (each client made anew).
    static func endpoints(_ backend: LockBackend) throws -> LockBackend.Endpoints {
        try .parse(
            redis: backend == .redis ? redisURL : nil, postgres: postgresURL, zookeeper: zookeeperConnect,
            logger: quietLogger())
    }

    /// `backend`'s service in `namespace`.
    static func service(_ backend: LockBackend, namespace: String) throws -> any LockService {
        try backend.makeService(try endpoints(backend), namespace: namespace, logger: quietLogger())
    }

    /// A namespace (key prefix, table, root node) no other test uses.
    static func uniqueNamespace() -> String { "locks_\(UUID().uuidString.prefix(8).lowercased())" }
}

/// A backend's service for `LockConformance`, in a namespace of its own per harness (a PostgreSQL
/// table its first acquire creates); with `redisCluster`, the Redis lock on the Redis Cluster.
struct LockHarness: LockServiceHarness {
    let backend: LockBackend
    var redisCluster = false
    let namespace = LockBackends.uniqueNamespace()

    func makeService() throws -> any LockService {
        guard redisCluster else { return try LockBackends.service(backend, namespace: namespace) }
        let cluster = try RedisConfiguration(clusterSeeds: LockBackends.redisClusterSeeds ?? "127.0.0.1:7000")
        return try backend.makeService(
            .init(redis: RedisClient(configuration: cluster, logger: quietLogger())), namespace: namespace,
            logger: quietLogger())
    }

    /// The same service on port 1 of loopback, where nothing listens.
    func makeUnreachableService() throws -> any LockService {
        let endpoints = try LockBackend.Endpoints.parse(
            redis: "redis://127.0.0.1:1", postgres: "postgresql://postgres@127.0.0.1:1/postgres",
            zookeeper: "127.0.0.1:1", logger: quietLogger())
        return try backend.makeService(endpoints, namespace: namespace, logger: quietLogger())
    }
}
