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
