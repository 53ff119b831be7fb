import ClusterLocks
import Foundation
import LockConformance
import PostgresLocks
import SessionRedis
import ZooKeeperLocks
import TestSupport

/// The lock services scripts/test.sh starts: REDIS_URL, POSTGRES_URL.
enum LockBackends {
    static let redisURL = ProcessInfo.processInfo.environment["REDIS_URL"]
    static let postgresURL = ProcessInfo.processInfo.environment["POSTGRES_URL"]
    static let redisClusterSeeds = ProcessInfo.processInfo.environment["REDIS_CLUSTER_SEEDS"]
    static let zookeeperConnect = ProcessInfo.processInfo.environment["ZOOKEEPER_CONNECT"]
}

/// Redis, or a Redis Cluster (every lock's keys in its name's slot): a key prefix of its own per harness.
struct RedisLockHarness: LockServiceHarness {
    let cluster: Bool
    let prefix = "lock-test:\(UUID().uuidString.prefix(8)):"

    func makeService() throws -> any LockService {
        let configuration =
            cluster
            ? try RedisConfiguration(clusterSeeds: LockBackends.redisClusterSeeds ?? "127.0.0.1:7000")
            : try RedisConfiguration(url: LockBackends.redisURL ?? "redis://127.0.0.1:6379")
        return RedisLock(client: client(configuration), keyPrefix: prefix, logger: quietLogger())
    }

    func makeUnreachableService() throws -> any LockService {
        RedisLock(client: client(try RedisConfiguration(url: "redis://127.0.0.1:1")), keyPrefix: prefix, logger: quietLogger())
    }

    private func client(_ configuration: RedisConfiguration) -> RedisClient {
        var configuration = configuration
        configuration.connectTimeoutMillis = 500
        configuration.commandTimeoutMillis = 2000
        return RedisClient(configuration: configuration, logger: quietLogger())
    }
}

/// PostgreSQL's lock table: a table of its own per harness, which its first acquire creates.
struct PostgresTableHarness: LockServiceHarness {
    let table = "locks_\(UUID().uuidString.prefix(8).lowercased())"

    func makeService() throws -> any LockService {
        PostgresTableLock(
            configuration: PostgresConfiguration(url: LockBackends.postgresURL ?? "postgresql://postgres@127.0.0.1:5432/postgres"),
            table: table, logger: quietLogger())
    }

    func makeUnreachableService() throws -> any LockService {
        PostgresTableLock(configuration: PostgresConfiguration(url: "postgresql://postgres@127.0.0.1:1/postgres"), table: table, logger: quietLogger())
    }
}

/// PostgreSQL's advisory locks.
struct PostgresAdvisoryHarness: LockServiceHarness {
    func makeService() throws -> any LockService {
        PostgresAdvisoryLock(
            configuration: PostgresConfiguration(url: LockBackends.postgresURL ?? "postgresql://postgres@127.0.0.1:5432/postgres"),
            logger: quietLogger())
    }

    func makeUnreachableService() throws -> any LockService {
        PostgresAdvisoryLock(configuration: PostgresConfiguration(url: "postgresql://postgres@127.0.0.1:1/postgres"), logger: quietLogger())
    }
}

/// ZooKeeper: a root node of its own per harness, 3 s sessions.
struct ZooKeeperHarness: LockServiceHarness {
    let namespace = "locks_\(UUID().uuidString.prefix(8).lowercased())"

    func makeService() throws -> any LockService {
        ZooKeeperLock(
            configuration: ZooKeeperConfiguration(connect: LockBackends.zookeeperConnect ?? "127.0.0.1:2181"),
            namespace: namespace, logger: quietLogger())
    }

    func makeUnreachableService() throws -> any LockService {
        ZooKeeperLock(
            configuration: ZooKeeperConfiguration(connect: "127.0.0.1:1", connectTimeoutMillis: 1_000), namespace: namespace,
            logger: quietLogger())
    }
}
