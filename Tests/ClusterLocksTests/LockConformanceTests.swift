import ClusterLocks
import LockConformance
import Testing
import TestSupport

@Suite(.enabled(if: LockBackends.redisURL != nil, "needs REDIS_URL"), .tags(.integration))
struct RedisLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(RedisLockHarness(cluster: false)) }
}

@Suite(.enabled(if: LockBackends.redisClusterSeeds != nil, "needs REDIS_CLUSTER_SEEDS"), .tags(.integration))
struct RedisClusterLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(RedisLockHarness(cluster: true)) }
}

@Suite(.enabled(if: LockBackends.postgresURL != nil, "needs POSTGRES_URL"), .tags(.integration))
struct PostgresTableLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(PostgresTableHarness()) }
}

@Suite(.enabled(if: LockBackends.postgresURL != nil, "needs POSTGRES_URL"), .tags(.integration))
struct PostgresAdvisoryLockConformanceTests {
    @Test(arguments: LockConformance.allCases)
    func conformance(_ check: LockConformance) throws { try check.run(PostgresAdvisoryHarness()) }
}

@Suite(.enabled(if: LockBackends.zookeeperConnect != nil, "needs ZOOKEEPER_CONNECT"), .tags(.integration))
struct ZooKeeperLockConformanceTests {
    /// Every check but those that let a lease run out unextended (`needsLeasesThatRunOut`): a
    /// ZooKeeper session renews itself; `LockProcessTests` stops a holder to end one.
    @Test(arguments: LockConformance.allCases.filter { !$0.needsLeasesThatRunOut })
    func conformance(_ check: LockConformance) throws { try check.run(ZooKeeperHarness()) }
}
