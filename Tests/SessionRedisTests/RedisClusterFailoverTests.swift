import ClusterSupervisor
import Foundation
import SessionCore
@testable import SessionRedis
import Synchronization
import Testing
import TestSupport

/// A primary of a private Redis Cluster (3 primaries with 1 or 2 replicas
/// each, node timeout 1 s) is SIGKILLed while 4 threads increment counters
/// in 60 sessions; a replica takes over.
@Suite(.enabled(if: RedisServerProcess.isInstalled, "needs redis-server and redis-cli"), .serialized, .tags(.integration))
struct RedisClusterFailoverTests {
    struct Outcome {
        /// Seconds from the kill until every session answered again.
        var recoverySeconds: Double
        /// Increments acknowledged but missing after the failover.
        var lost: Int64
        /// Increments that failed (outcome unknown: they may have been applied).
        var failed: Int
        var acknowledged: Int64
    }

    func run(waitReplicas: Int, replicasPerPrimary: Int) throws -> Outcome {
        var template = Array("/tmp/redis-cluster-failover-XXXXXX".utf8CString)
        let directory = String(cString: try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = try PrivateRedisCluster(
            replicasPerPrimary: replicasPerPrimary, nodeTimeoutMillis: 1_000, directory: directory)
        defer { cluster.shutdown(graceMillis: 0) }
        var configuration = try RedisConfiguration(clusterSeeds: cluster.seeds.joined(separator: ","))
        configuration.commandTimeoutMillis = 1_000
        configuration.waitReplicas = waitReplicas
        configuration.waitTimeoutMillis = 500
        let store = RedisSessionStore(
            client: RedisClient(configuration: configuration, logger: quietLogger()),
            expiry: SessionExpiry(idleTimeoutMillis: 600_000, absoluteTimeoutMillis: nil), logger: quietLogger())
        let writers = try IncrementWriters(threads: 4, store: store, sessions: (0..<60).map { _ in SessionID.generate() })
        // The writers wrote before the kill (a count, not a time: a loaded machine only makes it slower).
        let wrote = waitUntil(timeout: 60) { writers.total > 100 }
        let killedAt = Date()
        try cluster.kill("redis-1")
        // Run on until the replica took over and every session answered for 2 s in a row. The
        // failover takes 2-3 s (node timeout 1 s, then the replica's election): 30 s is ten times that.
        let recovered = waitUntil(timeout: 30) {
            guard let last = writers.lastFailure else { return Date().timeIntervalSince(killedAt) > 2 }
            return Date().timeIntervalSince(last) > 2
        }
        try #require(writers.stop(seconds: 10))
        try #require(wrote, "the writers did not write before the kill")
        try #require(recovered, "requests never succeeded again")
        let last = writers.lastFailure ?? killedAt
        return Outcome(
            recoverySeconds: last.timeIntervalSince(killedAt), lost: try writers.lost(in: store),
            failed: writers.failures.count, acknowledged: writers.total)
    }

    /// Two replicas per primary: after the failover the new primary still has
    /// one to acknowledge writes. (With one, its shard refuses writes with a
    /// clear 503 until a replica is back: `WAIT 1` cannot be met.)
    @Test func withWaitReplicasEveryAcknowledgedWriteSurvivesAPrimarysDeath() throws {
        let outcome = try run(waitReplicas: 1, replicasPerPrimary: 2)
        print("redis cluster failover, waitReplicas 1: recovered in \(outcome.recoverySeconds) s; "
            + "\(outcome.acknowledged) increments acknowledged, \(outcome.lost) lost, \(outcome.failed) failed")
        #expect(outcome.lost == 0)
        #expect(outcome.acknowledged > 100, "the writers wrote")
    }

    @Test func withoutWaitReplicasTheLossIsReported() throws {
        let outcome = try run(waitReplicas: 0, replicasPerPrimary: 1)
        print("redis cluster failover, waitReplicas 0: recovered in \(outcome.recoverySeconds) s; "
            + "\(outcome.acknowledged) increments acknowledged, \(outcome.lost) lost, \(outcome.failed) failed")
        #expect(outcome.acknowledged > 100, "the writers wrote")
    }

    @Test func aClusterThatWentDownIsFoundAgainWithoutARestart() throws {
        var template = Array("/tmp/redis-cluster-down-XXXXXX".utf8CString)
        let directory = String(cString: try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = try PrivateRedisCluster(nodeTimeoutMillis: 1_000, directory: directory)
        defer { cluster.shutdown(graceMillis: 0) }
        var configuration = try RedisConfiguration(clusterSeeds: cluster.seeds.joined(separator: ","))
        configuration.commandTimeoutMillis = 500
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        let store = RedisSessionStore(client: client, logger: quietLogger())
        let id = SessionID.generate()
        #expect(try store.apply(SessionDelta(id: id, changes: [.set("a", [0x31])], createIfMissing: true)) != nil)

        for name in cluster.nodeNames { try cluster.kill(name) }
        let down = #expect(throws: SessionStoreError.self) { _ = try store.load(id) }
        #expect(down?.code == .unavailable)
        #expect(client.healthProblem() != nil)

        // Every node comes back (empty: no persistence) and finds the others through its nodes.conf.
        for name in cluster.nodeNames { try cluster.restart(name) }
        #expect(waitUntil(timeout: 30) {
            (try? store.apply(SessionDelta(id: SessionID.generate(), changes: [.set("a", [0x31])], createIfMissing: true))) != nil
        }, "the same client works again")
        #expect(client.healthProblem() == nil)
    }
}
