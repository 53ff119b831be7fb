import ClusterDemo
import ClusterLocks
import LockConformance
import Testing
import TestSupport

@Suite(.enabled(if: LockBackends.available(.redis), "needs REDIS_URL"), .tags(.integration))
struct RedisLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(LockHarness(backend: .redis)) }
}

@Suite(.enabled(if: LockBackends.redisClusterSeeds != nil, "needs REDIS_CLUSTER_SEEDS"), .tags(.integration))
struct RedisClusterLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(LockHarness(backend: .redis, redisCluster: true)) }
}

@Suite(.enabled(if: LockBackends.available(.postgres), "needs POSTGRES_URL"), .tags(.integration))
struct PostgresTableLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(LockHarness(backend: .postgres)) }
}

@Suite(.enabled(if: LockBackends.available(.postgresAdvisory), "needs POSTGRES_URL"), .tags(.integration))
struct PostgresAdvisoryLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(LockHarness(backend: .postgresAdvisory)) }
}

@Suite(.enabled(if: LockBackends.available(.zookeeper), "needs ZOOKEEPER_CONNECT"), .tags(.integration))
struct ZooKeeperLockConformanceTests {
    /// Every check but those that let a lease run out unextended (`needsLeasesThatRunOut`): a
    /// ZooKeeper session renews itself; `LockProcessTests` stops a holder to end one.
    @Test(arguments: LockConformance.allCases.filter { !$0.needsLeasesThatRunOut })
    func conformance(_ check: LockConformance) throws { try check.run(LockHarness(backend: .zookeeper)) }
}
