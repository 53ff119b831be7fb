import ClusterDemo
import ClusterLocks
import ClusterSupervisor
import Foundation
import Logging
import SessionRedis
import Synchronization
import SystemSupport
import ZooKeeperLocks

/// The lock service failing over under load: 8 contenders (each its own
/// client) take one lock in turn for `seconds`, and write their tokens to a
/// fenced and an unfenced resource while they hold it; at `faultAtMillis`
/// the service fails. Counted: grants, holds that overlapped another (a
/// mutual-exclusion violation, seen by a counter of holders inside), the
/// fenced resource's refusals, the unfenced one's out-of-turn writes,
/// releases that found the lock lost, failed calls, and the time from the
/// fault to the next grant.
extension LockBench {
    public struct FailoverResult: Sendable {
        public var backend: String
        public var fault: String
        public var grants = 0
        public var overlaps = 0
        public var fencedRefused = 0
        public var unfencedOutOfTurn = 0
        public var lostReleases = 0
        public var failedCalls = 0
        /// From the fault to the first grant after it; nil when none came.
        public var recoveryMillis: Double?
    }

    /// Runs the load on services from `make`, calling `fault` at `faultAtMillis`.
    func failoverLoad(
        backend: String, fault: String, seconds: Double, faultAtMillis: Int, leaseMillis: Int,
        make: () throws -> any LockService, logger: Logger, _ injectFault: @escaping @Sendable () throws -> Void
    ) throws -> FailoverResult {
        let locks = try (0..<8).map { _ in DistributedLock(service: try make(), logger: logger) }
        let resource = (fenced: FencedResource(fenced: true), unfenced: FencedResource(fenced: false))
        let inside = Atomic<Int>(0)
        let counts = Mutex(FailoverResult(backend: backend, fault: fault))
        let faultAt = Atomic<UInt64>(0)
        let start = monotonicNanos()
        let end = start + UInt64(seconds * 1e9)
        let faultError = Mutex<(any Error)?>(nil)
        startThread {
            sleepMillis(Int64(faultAtMillis))
            do { try injectFault() } catch { faultError.withLock { $0 = error } }
            faultAt.store(monotonicNanos(), ordering: .sequentiallyConsistent)
        }
        startThreads(8) { i in
            while monotonicNanos() < end {
                do {
                    let lease = try locks[i].acquire("failover", by: LockOwner(), leaseMillis: leaseMillis, waitMillis: 2_000)
                    let overlapped = inside.add(1, ordering: .sequentiallyConsistent).newValue > 1
                    let refused = !resource.fenced.write(fencingToken: lease.fencingToken)
                    _ = resource.unfenced.write(fencingToken: lease.fencingToken)
                    sleepMillis(2)
                    inside.subtract(1, ordering: .sequentiallyConsistent)
                    var lost = false
                    do { try locks[i].release(lease) } catch let error as LockError where error.code == .lost { lost = true }
                    let faulted = faultAt.load(ordering: .sequentiallyConsistent)
                    counts.withLock { c in
                        c.grants += 1
                        if overlapped { c.overlaps += 1 }
                        if refused { c.fencedRefused += 1 }
                        if lost { c.lostReleases += 1 }
                        if faulted != 0 && c.recoveryMillis == nil { c.recoveryMillis = Double(monotonicNanos() - faulted) / 1e6 }
                    }
                } catch {
                    let n = counts.withLock { c in
                        c.failedCalls += 1
                        return c.failedCalls
                    }
                    if n % 20 == 1 { logger.debug("failover: a failed call", metadata: ["error": "\(error)"]) }
                    sleepMillis(20)
                }
            }
        }.wait()
        if let error = faultError.withLock({ $0 }) { throw BenchFailure("the fault failed: \(error)") }
        var result = counts.withLock { $0 }
        result.unfencedOutOfTurn = resource.unfenced.snapshot.acceptedOutOfTurn
        return result
    }

    /// Redis: a private primary, replica and Sentinel (`down-after-milliseconds` 500); the
    /// replica is cut off for 300 ms (a replica that lags), the primary SIGKILLed, and the
    /// Sentinel promotes the replica. Without `durability` writes are asynchronous: the locks and
    /// fence counters written to the primary meanwhile are lost, and tokens are issued again.
    /// With it, a grant counts only once the replica acknowledged it (`WAIT`).
    func redisFailover(seconds: Double, durability: RedisDurability?, logger: Logger) throws -> FailoverResult {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-locks-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let set = try PrivateRedisReplicaSet(
            replicas: 1, sentinel: true, directory: directory, downAfterMillis: 500, failoverTimeoutMillis: 2_000)
        defer { set.shutdown(graceMillis: 2_000) }
        guard let sentinel = set.sentinel else { throw BenchFailure("no Sentinel") }
        let configuration = try RedisConfiguration.fromCommandLine(
            url: "redis://127.0.0.1:6379", sentinels: sentinel.address, masterName: set.masterName, poolSize: 16,
            timeoutMillis: 1_000)
        let primary = set.primary
        guard let replica = set.replicas.first?.process else { throw BenchFailure("no replica") }
        return try failoverLoad(
            backend: "redis" + (durability.map { " (WAIT \($0.replicas))" } ?? " (no WAIT)"),
            fault: "replica cut off 300 ms, then the primary SIGKILLed (Sentinel)", seconds: seconds, faultAtMillis: 2_000,
            leaseMillis: 2_000,
            make: {
                RedisLock(
                    client: RedisClient(configuration: configuration, logger: Self.quiet(logger)), keyPrefix: "failover:",
                    durability: durability, logger: Self.quiet(logger))
            },
            logger: logger
        ) {
            // The replica falls behind while grants go on, then the primary dies: what the replica
            // never received is lost when it is promoted. It is stopped, and the primary drops its
            // link (so nothing more reaches even its socket), for 300 ms.
            guard replica.send(SIGSTOP) else { throw BenchFailure("the replica is not running") }
            defer { replica.send(SIGCONT) }
            let direct = RedisClient(
                configuration: try RedisConfiguration(url: "redis://\(primary.address)"), logger: logger)
            defer { direct.close() }
            try direct.send("CLIENT", "KILL", "TYPE", "replica")
            sleepMillis(300)
            try primary.kill()
        }
    }

    /// ZooKeeper: the ensemble's leader (found by `srvr` on each client port) is SIGKILLed by its
    /// PID; `pids` are the servers' in the order of `connect`'s addresses.
    func zookeeperFailover(connect: String, pids: [pid_t], seconds: Double, namespace: String, logger: Logger) throws
        -> FailoverResult
    {
        let ports = connect.split(separator: ",").compactMap { $0.split(separator: ":").last.flatMap { Int($0) } }
        guard ports.count == pids.count, !pids.isEmpty else {
            throw BenchFailure("--zookeeper-pids must name one PID per server of --zookeeper")
        }
        for pid in pids where !processCommandLine(pid).contains("QuorumPeerMain") {
            throw BenchFailure("PID \(pid) is not a ZooKeeper server")
        }
        let configuration = ZooKeeperConfiguration(connect: connect, sessionTimeoutMillis: 2_000)
        return try failoverLoad(
            backend: "zookeeper", fault: "leader SIGKILLed (3 servers)", seconds: seconds, faultAtMillis: 2_000,
            leaseMillis: 2_000,
            make: { ZooKeeperLock(configuration: configuration, namespace: namespace, logger: Self.quiet(logger)) },
            logger: logger
        ) {
            guard let leader = ports.firstIndex(where: { zookeeperMode(port: $0) == "leader" }) else {
                throw BenchFailure("no ZooKeeper server says it leads")
            }
            guard kill(pids[leader], SIGKILL) == 0 else { throw BenchFailure("kill \(pids[leader]): errno \(errno)") }
        }
    }

    /// PostgreSQL (the table or advisory locks): a client backend of the postmaster `postmaster`
    /// is SIGKILLed, on which the postmaster ends every session and restarts the server (crash
    /// recovery; committed rows stay, sessions and their advisory locks do not).
    func postgresFailover(_ backend: LockBackend, postmaster: pid_t, seconds: Double, namespace: String, logger: Logger)
        throws -> FailoverResult
    {
        guard processCommandLine(postmaster).contains("postgres") else { throw BenchFailure("PID \(postmaster) is not PostgreSQL") }
        return try failoverLoad(
            backend: backend.rawValue, fault: "server crash and restart (a backend SIGKILLed)", seconds: seconds,
            faultAtMillis: 2_000, leaseMillis: 2_000,
            make: { try backend.makeService(endpoints, namespace: namespace, logger: Self.quiet(logger)) }, logger: logger
        ) {
            let backends = childProcesses(of: postmaster).filter { processCommandLine($0).contains("127.0.0.1(") }
            guard let victim = backends.first else { throw BenchFailure("no client backend of PostgreSQL \(postmaster)") }
            guard kill(victim, SIGKILL) == 0 else { throw BenchFailure("kill \(victim): errno \(errno)") }
        }
    }

    private func childProcesses(of parent: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.filter { pid in
            guard let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return false }
            // pid (comm) state ppid …: the fields after the command's closing parenthesis.
            let text = String(decoding: stat, as: UTF8.self)
            guard let close = text.lastIndex(of: ")") else { return false }
            let fields = text[text.index(after: close)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == parent
        }
    }

    /// The failing services' clients log only errors: their warnings (a server refused, a connection
    /// lost) are what the phase measures, counted, not logged for each of thousands of calls.
    private static func quiet(_ logger: Logger) -> Logger {
        var quiet = logger
        quiet.logLevel = .error
        return quiet
    }

    private func processCommandLine(_ pid: pid_t) -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
    }

    /// The `Mode:` a ZooKeeper server reports to `srvr` (leader, follower), nil when it does not answer.
    private func zookeeperMode(port: Int) -> String? {
        guard let fd = try? Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 1_000) else { return nil }
        defer { close(fd) }
        Sockets.setReceiveTimeout(fd, millis: 2_000)
        guard Sockets.writeAll(fd, Array("srvr".utf8)) else { return nil }
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            reply += buffer[0..<n]
        }
        let text = String(decoding: reply, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Mode: ") }) else { return nil }
        return String(line.dropFirst("Mode: ".count))
    }
}
