import Foundation
import SessionCore
import SessionRedis
import SessionStoreConformance
import TestSupport
import Testing

/// Redis keeps its own time: the harness sleeps for real.
struct RedisHarness: SessionStoreHarness {
    /// The test Redis Cluster instead of the test redis-server.
    var cluster = false

    func makeStore(expiry: SessionExpiry) throws -> any SessionStore {
        RedisSessionStore(
            client: try TestRedis.client(cluster: cluster), expiry: expiry, keyPrefix: TestRedis.uniquePrefix(),
            logger: quietLogger())
    }
    func advance(millis: Int64) { usleep(UInt32(millis) * 1000) }
}

@Suite(.tags(.integration)) struct RedisStoreConformanceTests {
    @Test(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"),
          arguments: SessionStoreConformance.allCases)
    func redisStoreConforms(_ check: SessionStoreConformance) throws {
        try check.run(RedisHarness())
    }
}

/// Principal-indexed Redis stores, each with a key prefix of its own.
struct RedisPrincipalHarness: PrincipalStoreHarness {
    var cluster = false
    func makeStore(expiry: SessionExpiry, principalLimit: PrincipalSessionLimit?) throws -> any PrincipalIndexedStore {
        RedisSessionStore(
            client: try TestRedis.client(cluster: cluster), expiry: expiry, keyPrefix: TestRedis.uniquePrefix(),
            principalLimit: principalLimit, nodeName: "node-t", logger: quietLogger())
    }
    func advance(millis: Int64) { usleep(UInt32(millis) * 1000) }
    func sweep(_ store: any PrincipalIndexedStore) throws { try #require(store as? RedisSessionStore).sweepExpired() }
}

@Suite(.tags(.integration)) struct RedisPrincipalConformanceTests {
    @Test(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"),
          arguments: PrincipalStoreConformance.allCases)
    func redisStoreIndexesPrincipals(_ check: PrincipalStoreConformance) throws {
        try check.run(RedisPrincipalHarness())
    }

    @Test(.enabled(if: TestRedis.clusterAvailable, "needs REDIS_CLUSTER_SEEDS (scripts/test.sh starts a Redis Cluster)"),
          arguments: PrincipalStoreConformance.allCases)
    func redisClusterStoreIndexesPrincipals(_ check: PrincipalStoreConformance) throws {
        try check.run(RedisPrincipalHarness(cluster: true))
    }
}
