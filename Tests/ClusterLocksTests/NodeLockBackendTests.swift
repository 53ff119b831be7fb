import ClusterDemo
import ClusterLocks
import Foundation
import SessionCore
import Testing
import TestSupport

/// The backends other than Redis that a node's exclusive mode can use here.
private let nodeBackends = [LockBackend.postgres, .postgresAdvisory, .zookeeper].filter(LockBackends.available)

/// `session-cluster node --exclusive-sessions --lock-backend …` takes each session's lock in that
/// service: a session whose lock another client holds there gets 503 session_busy, and runs again
/// once it is released.
@Suite(.enabled(if: !nodeBackends.isEmpty, "needs POSTGRES_URL or ZOOKEEPER_CONNECT"), .tags(.integration))
struct NodeLockBackendTests {
    @Test(arguments: nodeBackends)
    func aSessionLockedInTheBackendIsBusy(_ backend: LockBackend) throws {
        let (node, port) = try ChildProcess.sessionClusterNode(
            id: "locks-\(backend.rawValue)",
            arguments: [
                "--exclusive-sessions", "--session-lock-wait-ms", "500", "--lock-backend", backend.rawValue, "--postgres", LockBackends.postgresURL ?? "",
                "--zookeeper", LockBackends.zookeeperConnect ?? "",
            ])
        defer { node.stop() }
        let url = "http://127.0.0.1:\(port)"
        let curl = CurlClient()
        let first = try curl.request("POST", url + "/api/counter")
        #expect(first.status == 200, "\(first.body) \(node.output)")
        let id = try #require(curl.cookie("sid").flatMap(SessionID.init(rawValue:)))

        // Another client holds the session's lock in the same service (the node's namespace).
        let locks = DistributedLock(
            service: try LockBackends.service(backend, namespace: "session_locks"), logger: quietLogger())
        let lease = try locks.acquire(id.rawValue, by: LockOwner(), leaseMillis: 60_000, waitMillis: 10_000)
        let busy = try curl.request("POST", url + "/api/counter")
        #expect(busy.status == 503)
        #expect(busy.body.contains("\"error\":\"session_busy\""), "\(busy.body)")

        try locks.release(lease)
        let after = try curl.request("POST", url + "/api/counter")
        #expect(after.status == 200)
        #expect(after.body.contains("\"count\":2"), "the refused request changed nothing: \(after.body)")
    }
}
