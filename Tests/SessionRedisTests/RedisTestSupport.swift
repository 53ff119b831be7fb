import Foundation
import Logging
import SessionCore
import SessionRedis
import TestSupport

/// The redis-server that scripts/test.sh started, from `REDIS_URL`.
enum TestRedis {
    static let url = ProcessInfo.processInfo.environment["REDIS_URL"]
    static let available = url != nil
    /// The Redis Cluster scripts/test.sh started (3 primaries, 3 replicas), from `REDIS_CLUSTER_SEEDS`.
    static let clusterSeeds = ProcessInfo.processInfo.environment["REDIS_CLUSTER_SEEDS"]
    static let clusterAvailable = clusterSeeds != nil

    /// The test redis-server's settings, or the test cluster's with `cluster`.
    static func configuration(poolSize: Int = 8, commandTimeoutMillis: Int = 1000, cluster: Bool = false) throws -> RedisConfiguration {
        var configuration =
            cluster
            ? try RedisConfiguration(clusterSeeds: clusterSeeds ?? "127.0.0.1:7000")
            : try RedisConfiguration(url: url ?? "redis://127.0.0.1:6379")
        configuration.poolSize = poolSize
        configuration.commandTimeoutMillis = commandTimeoutMillis
        return configuration
    }

    static func client(poolSize: Int = 8, cluster: Bool = false) throws -> RedisClient {
        RedisClient(
            configuration: try configuration(poolSize: poolSize, commandTimeoutMillis: cluster ? 2000 : 1000, cluster: cluster),
            logger: quietLogger())
    }

    /// A key prefix no other test uses.
    static func uniquePrefix() -> String { "test:\(UUID().uuidString.prefix(8)):" }
}
