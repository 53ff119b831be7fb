import ClusterDemo
import ClusterLocks
import ClusterSupervisor
import Foundation
import Logging
import SessionRedis
import Synchronization
import SystemSupport

/// `session-cluster bench-locks`: what each lock service costs and what it
/// guarantees, measured the same way on each.
///
/// Per backend:
/// - **uncontended**: acquire + release of a free lock, one thread, per second;
/// - **hand-over**: 8 contenders (each its own client) on one lock; from a
///   holder's release call to the next holder's acquire returning, p50 and p99;
/// - **killed holder**: a `lock-worker` process takes the lock and is
///   SIGKILLed; how long until another client has it;
/// - **paused holder**: `rounds` times, a `lock-worker` takes the lock and is
///   SIGSTOPped past its lease; another client takes the lock and writes to a
///   fenced and an unfenced resource; the first resumes and writes with its old
///   token. The unfenced resource counts the writes it took out of turn, the
///   fenced one those it refused.
public struct LockBench: Sendable {
    /// A backend's results.
    public struct Result: Sendable {
        public var backend: String
        public var acquireReleasePerSecond = 0.0
        public var handOverP50Micros = 0.0
        public var handOverP99Micros = 0.0
        public var handOvers = 0
        public var killedHolderTakeoverMillis = 0.0
        public var leaseMillis = 0
        public var pausedRounds = 0
        public var staleWritesUnfenced = 0
        public var staleWritesRefusedFenced = 0
        public var staleWritesAcceptedFenced = 0
    }

    public var backends: [LockBackend] = [.redis]
    public var endpoints: LockBackend.Endpoints
    /// Endpoint arguments for the `lock-worker` processes (`--redis`, `--postgres`, `--zookeeper`).
    public var workerArguments: [String]
    /// The `session-cluster` binary the workers run.
    public var executable: String
    /// Seconds of each timed phase.
    public var seconds = 3.0
    /// The lease of the killed and paused holders (ZooKeeper: their session timeout).
    public var leaseMillis = 1_000
    /// Paused-holder rounds.
    public var pausedRounds = 5
    /// Whether to run the failover phases (`failover(logger:)`).
    public var failover = false
    /// Seconds of each failover phase (the fault comes after 2).
    public var failoverSeconds = 8.0
    /// The ZooKeeper servers' PIDs, in the order of the ensemble's addresses: its leader is
    /// killed in the failover phase.
    public var zookeeperPIDs: [pid_t] = []
    /// The PostgreSQL postmaster's PID: a crash of one of its backends restarts the server in
    /// the failover phase.
    public var postgresPID: pid_t?

    public init(endpoints: LockBackend.Endpoints, workerArguments: [String], executable: String) {
        self.endpoints = endpoints
        self.workerArguments = workerArguments
        self.executable = executable
    }

    /// Runs every backend in turn; each in a namespace of its own.
    public func run(logger: Logger) throws -> [Result] {
        try backends.map { backend in
            logger.info("bench-locks: \(backend.rawValue)")
            let namespace = Self.newNamespace()
            let make = { try backend.makeService(endpoints, namespace: namespace, logger: logger) }
            var result = Result(backend: backend.rawValue)
            result.leaseMillis = leaseMillis
            result.acquireReleasePerSecond = try uncontended(try make(), logger: logger)
            try handOver(make, into: &result, logger: logger)
            result.killedHolderTakeoverMillis = try killedHolder(backend, namespace, try make(), logger: logger)
            try pausedHolders(backend, namespace, try make(), into: &result, logger: logger)
            return result
        }
    }

    /// The failover phases of the chosen backends: Redis (a private primary, replica and Sentinel
    /// of its own; without `WAIT`, then with `WAIT 1`), PostgreSQL (a crash and restart of the given server, by `postgresPID`) and
    /// ZooKeeper (the leader of the given ensemble, by `zookeeperPIDs`).
    public func failover(logger: Logger) throws -> [FailoverResult] {
        var results: [FailoverResult] = []
        if backends.contains(.redis) {
            logger.info("bench-locks: redis failover")
            results.append(try redisFailover(seconds: failoverSeconds, durability: nil, logger: logger))
            results.append(
                try redisFailover(
                    seconds: failoverSeconds, durability: RedisDurability(replicas: 1, timeoutMillis: 200), logger: logger))
        }
        for backend in backends where backend == .postgres || backend == .postgresAdvisory {
            guard let postgresPID else { break }
            logger.info("bench-locks: \(backend.rawValue) failover")
            results.append(try postgresFailover(backend, postmaster: postgresPID, seconds: failoverSeconds, namespace: Self.newNamespace(), logger: logger))
        }
        if backends.contains(.zookeeper), let connect = endpoints.zookeeper?.connect {
            logger.info("bench-locks: zookeeper failover")
            results.append(
                try zookeeperFailover(
                    connect: connect, pids: zookeeperPIDs, seconds: failoverSeconds, namespace: Self.newNamespace(),
                    logger: logger))
        }
        return results
    }

    /// A namespace (key prefix, table, root node) of a run's own.
    static func newNamespace() -> String {
        "bench_locks_" + secureRandomToken(byteCount: 6).lowercased().filter { $0.isLetter || $0.isNumber }
    }

    private func uncontended(_ service: any LockService, logger: Logger) throws -> Double {
        let locks = DistributedLock(service: service, logger: logger)
        let owner = LockOwner()
        let end = monotonicNanos() + UInt64(seconds * 1e9)
        var count = 0
        let start = monotonicNanos()
        while monotonicNanos() < end {
            try locks.release(try locks.acquire("uncontended", by: owner, leaseMillis: 10_000, waitMillis: 1_000))
            count += 1
        }
        return Double(count) / (Double(monotonicNanos() - start) / 1e9)
    }

    private func handOver(_ make: () throws -> any LockService, into result: inout Result, logger: Logger) throws {
        let locks = try (0..<8).map { _ in DistributedLock(service: try make(), logger: logger) }
        let lastRelease = Atomic<UInt64>(0)
        let samples = Mutex<[Double]>([])
        let failure = Mutex<(any Error)?>(nil)
        let end = monotonicNanos() + UInt64(seconds * 1e9)
        startThreads(8) { i in
            do {
                while monotonicNanos() < end {
                    let lease = try locks[i].acquire("contended", by: LockOwner(), leaseMillis: 30_000, waitMillis: 30_000)
                    let released = lastRelease.load(ordering: .sequentiallyConsistent)
                    if released != 0 {
                        samples.withLock { $0.append(Double(monotonicNanos() - released) / 1_000) }
                    }
                    lastRelease.store(monotonicNanos(), ordering: .sequentiallyConsistent)
                    try locks[i].release(lease)
                }
            } catch {
                failure.withLock { $0 = $0 ?? error }
            }
        }.wait()
        if let error = failure.withLock({ $0 }) { throw error }
        let sorted = samples.withLock { $0 }.sorted()
        guard !sorted.isEmpty else { throw BenchFailure("no hand-over measured") }
        result.handOvers = sorted.count
        result.handOverP50Micros = sorted[sorted.count / 2]
        result.handOverP99Micros = sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
    }

    private func killedHolder(_ backend: LockBackend, _ namespace: String, _ service: any LockService, logger: Logger) throws
        -> Double
    {
        let holder = try worker(backend, namespace, ["--name", "killed", "--keep"])
        defer { holder.terminate(graceMillis: 1_000) }
        guard waitForLine(holder, "acquired ", timeoutMillis: 30_000) != nil else {
            throw BenchFailure("the killed-holder worker took no lock: \(tail(holder))")
        }
        holder.send(SIGKILL)
        let start = monotonicNanos()
        let locks = DistributedLock(service: service, logger: logger)
        try locks.release(try locks.acquire("killed", by: LockOwner(), leaseMillis: 10_000, waitMillis: 60_000))
        return Double(monotonicNanos() - start) / 1e6
    }

    private func pausedHolders(
        _ backend: LockBackend, _ namespace: String, _ service: any LockService, into result: inout Result, logger: Logger
    ) throws {
        let resource = try FencedResourceServer(logger: logger)
        defer { resource.stop() }
        let locks = DistributedLock(service: service, logger: logger)
        for _ in 0..<pausedRounds {
            var go: [Int32] = [0, 0]
            guard pipe(&go) == 0 else { throw BenchFailure("pipe: errno \(errno)") }
            defer { close(go[1]) }
            let holder = try worker(
                backend, namespace, ["--name", "paused", "--go-fd", "0", "--resource-port", "\(resource.port)"],
                standardInput: go[0])
            close(go[0])
            defer { holder.terminate(graceMillis: 1_000) }
            guard waitForLine(holder, "acquired ", timeoutMillis: 30_000) != nil else {
                throw BenchFailure("the paused-holder worker took no lock: \(tail(holder))")
            }
            guard holder.send(SIGSTOP), waitUntilProcessStopped(holder.pid) else {
                throw BenchFailure("the paused-holder worker did not stop")
            }
            let lease = try locks.acquire("paused", by: LockOwner(), leaseMillis: 30_000, waitMillis: 60_000)
            _ = resource.fenced.write(fencingToken: lease.fencingToken)
            _ = resource.unfenced.write(fencingToken: lease.fencingToken)
            try locks.release(lease)
            holder.send(SIGCONT)
            var byte: UInt8 = 1
            _ = write(go[1], &byte, 1)
            guard holder.waitForExit(timeoutMillis: 60_000) != nil else { throw BenchFailure("the paused holder did not end") }
            result.pausedRounds += 1
        }
        result.staleWritesUnfenced = resource.unfenced.snapshot.acceptedOutOfTurn
        result.staleWritesRefusedFenced = resource.fenced.snapshot.refused
        result.staleWritesAcceptedFenced = resource.fenced.snapshot.acceptedOutOfTurn
    }

    private func worker(
        _ backend: LockBackend, _ namespace: String, _ arguments: [String], standardInput: Int32? = nil
    ) throws -> SpawnedProcess {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("lock-worker-\(UUID().uuidString).log").path
        return try SpawnedProcess(
            executable: executable,
            arguments: ["lock-worker", "--lock-backend", backend.rawValue, "--namespace", namespace, "--lease-ms",
                "\(leaseMillis)"] + workerArguments + arguments,
            environment: ProcessInfo.processInfo.environment, logPath: log, standardInput: standardInput)
    }

    /// The first line of `process`'s output that starts with `prefix`, waiting up to `timeoutMillis`.
    private func waitForLine(_ process: SpawnedProcess, _ prefix: String, timeoutMillis: Int) -> String? {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while monotonicMillis() < deadline {
            if let line = lines(process).first(where: { $0.hasPrefix(prefix) }) { return line }
            if !process.isRunning { return nil }
            sleepMillis(5)
        }
        return nil
    }

    private func lines(_ process: SpawnedProcess) -> [String] {
        ((try? String(contentsOfFile: process.logPath, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    private func tail(_ process: SpawnedProcess) -> String { lines(process).suffix(5).joined(separator: " | ") }
}

/// A Markdown table: `header`'s cells, then a row of cells per entry.
func markdownTable(_ header: [String], _ rows: [[String]]) -> String {
    ([header, header.map { _ in "---" }] + rows).map { "| " + $0.joined(separator: " | ") + " |\n" }.joined()
}

extension LockBench.Result {
    /// The table's header and a row per result.
    public static func table(_ results: [LockBench.Result]) -> String {
        markdownTable(
            [
                "backend", "acquire+release /s (uncontended)", "hand-over p50 / p99 (8 contenders)",
                "SIGKILLed holder taken over after (lease)",
                "paused holder's stale writes: unfenced took / fenced refused (rounds)",
            ],
            results.map { r in
                [
                    r.backend, "\(Int(r.acquireReleasePerSecond.rounded()))",
                    "\(Int(r.handOverP50Micros.rounded())) / \(Int(r.handOverP99Micros.rounded())) µs (\(r.handOvers))",
                    "\(Int(r.killedHolderTakeoverMillis.rounded())) ms (\(r.leaseMillis) ms)",
                    "\(r.staleWritesUnfenced) / \(r.staleWritesRefusedFenced) (\(r.pausedRounds))"
                        + (r.staleWritesAcceptedFenced > 0 ? ", \(r.staleWritesAcceptedFenced) taken by the fenced one!" : ""),
                ]
            })
    }
}

extension LockBench.FailoverResult {
    /// The table's header and a row per result.
    public static func table(_ results: [LockBench.FailoverResult]) -> String {
        markdownTable(
            [
                "backend", "fault", "grants", "overlapping holds", "fenced: refused", "unfenced: out of turn",
                "releases found lost", "failed calls", "next grant after the fault",
            ],
            results.map { r in
                [
                    r.backend, r.fault, "\(r.grants)", "\(r.overlaps)", "\(r.fencedRefused)", "\(r.unfencedOutOfTurn)",
                    "\(r.lostReleases)", "\(r.failedCalls)", r.recoveryMillis.map { "\(Int($0.rounded())) ms" } ?? "none",
                ]
            })
    }
}
