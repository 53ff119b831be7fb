import Benchmarks
import ClusterDemo
import ClusterLocks
import Foundation
import SystemSupport
import Testing
import TestSupport

/// The backends `session-cluster lock-worker` runs on here.
private let backends = LockBackend.allCases.filter(LockBackends.available)

/// One hold a worker reported: from its `acquired` line to its `released` line.
private struct Hold {
    var token: Int64
    var start: UInt64
    var end: UInt64
    var outcome: String
}

/// Locks held by other processes (`session-cluster lock-worker`): exclusion across processes, a
/// killed holder, a paused holder and fencing, on every backend.
@Suite(.enabled(if: !backends.isEmpty, "needs REDIS_URL, POSTGRES_URL or ZOOKEEPER_CONNECT"), .tags(.integration))
struct LockProcessTests {
    /// 8 contenders on 3 processes (3, 3 and 2 threads), 5 holds each: no two holds overlap in
    /// time (every process reads the same monotonic clock), and tokens increase with every hold.
    @Test(arguments: backends)
    func eightContendersOnThreeProcessesNeverOverlap(_ backend: LockBackend) throws {
        let namespace = LockBackends.uniqueNamespace()
        let workers = try [3, 3, 2].map { threads in
            try worker(backend, namespace, ["--threads", "\(threads)", "--rounds", "5", "--hold-ms", "2"])
        }
        defer { workers.forEach { $0.kill() } }
        for worker in workers {
            let exit = worker.waitForExit(timeout: 120)
            #expect(exit?.status == 0, "worker: \(worker.output)")
        }
        let holds = workers.flatMap { reportedHolds(in: $0.output) }.sorted { $0.start < $1.start }
        #expect(holds.count == 40)
        #expect(holds.allSatisfy { $0.outcome == "ok" })
        for (earlier, later) in zip(holds, holds.dropFirst()) {
            #expect(later.start > earlier.end, "two holds overlapped: tokens \(earlier.token) and \(later.token)")
            #expect(later.token > earlier.token, "token \(later.token) after \(earlier.token)")
        }
    }

    /// A holder SIGKILLed while holding: another process gets the lock within the holder's lease
    /// (Redis, the table; ZooKeeper's session timeout, the lease there) or at once, when the
    /// session dies with the connection (advisory: its 20 s lease is not what frees it).
    @Test(arguments: backends)
    func aKilledHoldersLockIsTakenOver(_ backend: LockBackend) throws {
        let namespace = LockBackends.uniqueNamespace()
        let lease = backend == .postgresAdvisory ? 20_000 : 1_500
        let holder = try worker(backend, namespace, ["--keep", "--lease-ms", "\(lease)"])
        defer { holder.kill() }
        try #require(waitUntil(timeout: 30) { holder.output.contains("acquired ") }, "no acquisition: \(holder.output)")
        let first = try #require(reportedHolds(in: holder.output, open: true).first)
        holder.kill()
        let locks = DistributedLock(service: try LockBackends.service(backend, namespace: namespace), logger: quietLogger())
        let start = monotonicNanos()
        let next = try locks.acquire("job", by: LockOwner(), leaseMillis: 10_000, waitMillis: 30_000)
        let waited = (monotonicNanos() - start) / 1_000_000
        print("\(backend.rawValue): a SIGKILLed holder's lock taken over after \(waited) ms (lease \(lease) ms)")
        #expect(next.fencingToken > first.token)
        if backend == .postgresAdvisory { #expect(waited < UInt64(lease), "freed by the lease, not by the connection's end") }
        try locks.release(next)
    }

    /// Kleppmann's pause: a holder stopped (SIGSTOP) past its 1 s lease; another owner takes the
    /// lock and writes; the first resumes and writes with its old token. The unfenced resource
    /// takes that write out of turn, the fenced one refuses it, and the first finds its lock lost.
    @Test(arguments: backends)
    func aPausedHolderIsFencedOut(_ backend: LockBackend) throws {
        let namespace = LockBackends.uniqueNamespace()
        let resource = try FencedResourceServer(logger: quietLogger())
        defer { resource.stop() }
        var go: [Int32] = [0, 0]
        try #require(pipe(&go) == 0)
        defer { close(go[1]) }
        let holder = try worker(
            backend, namespace, ["--lease-ms", "1000", "--go-fd", "3", "--resource-port", "\(resource.port)"],
            descriptors: [3: go[0]])
        close(go[0])
        defer { holder.kill() }
        try #require(waitUntil(timeout: 30) { holder.output.contains("acquired ") }, "no acquisition: \(holder.output)")
        let paused = try #require(reportedHolds(in: holder.output, open: true).first)
        try #require(holder.freeze(), "the holder did not stop")

        let locks = DistributedLock(service: try LockBackends.service(backend, namespace: namespace), logger: quietLogger())
        let lease = try locks.acquire("job", by: LockOwner(), leaseMillis: 30_000, waitMillis: 30_000)
        #expect(lease.fencingToken > paused.token)
        #expect(resource.fenced.write(fencingToken: lease.fencingToken))
        #expect(resource.unfenced.write(fencingToken: lease.fencingToken))
        try locks.release(lease)

        holder.send(SIGCONT)
        var byte: UInt8 = 1
        #expect(write(go[1], &byte, 1) == 1)
        let exit = holder.waitForExit(timeout: 60)
        #expect(exit?.status == 0, "worker: \(holder.output)")
        #expect(holder.output.contains("wrote \(paused.token) fenced=409 unfenced=200"), "\(holder.output)")
        #expect(reportedHolds(in: holder.output).first?.outcome == "lost", "the paused holder must find its lock lost")
        #expect(resource.fenced.snapshot.refused == 1)
        #expect(resource.fenced.snapshot.acceptedOutOfTurn == 0)
        #expect(resource.unfenced.snapshot.acceptedOutOfTurn == 1, "without fencing, the stale write gets in")
    }

    // MARK: - Helpers

    private func endpoints(_ namespace: String) -> [String] {
        [
            "--redis", LockBackends.redisURL ?? "", "--postgres", LockBackends.postgresURL ?? "", "--zookeeper",
            LockBackends.zookeeperConnect ?? "", "--namespace", namespace,
        ]
    }

    private func worker(
        _ backend: LockBackend, _ namespace: String, _ arguments: [String], descriptors: [Int32: Int32] = [:]
    ) throws -> ChildProcess {
        try ChildProcess(
            try ChildProcess.sessionClusterBinary(),
            ["lock-worker", "--lock-backend", backend.rawValue, "--name", "job"] + endpoints(namespace) + arguments,
            descriptors: descriptors)
    }

    /// The holds a worker reported; with `open`, also those not released (yet).
    private func reportedHolds(in output: String, open: Bool = false) -> [Hold] {
        var holds: [Int64: Hold] = [:]
        for line in output.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count >= 3, let token = Int64(words[1]), let time = UInt64(words[2]) else { continue }
            switch words[0] {
            case "acquired": holds[token] = Hold(token: token, start: time, end: 0, outcome: "")
            case "released" where words.count == 4:
                holds[token]?.end = time
                holds[token]?.outcome = String(words[3])
            default: break
            }
        }
        return holds.values.filter { open || !$0.outcome.isEmpty }.sorted { $0.start < $1.start }
    }
}
