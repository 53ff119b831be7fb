#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SystemSupport

/// A private primary with replicas and, optionally, a Sentinel to fail over to them, on
/// loopback: `redis-1` (the first primary), `redis-2`... (each started with
/// `--replicaof 127.0.0.1 <redis-1's port>`) and `sentinel-1`, each a `PrivateRedisServer`
/// on a free port, no persistence, its log in `directory`.
///
/// The Sentinel's configuration file, `sentinel-<port>.conf` in `directory`, monitors
/// `redis-1` as `masterName` with a quorum of 1, `down-after-milliseconds` and
/// `failover-timeout` as given; Sentinel rewrites it as it learns (replicas, epochs), and a
/// restarted Sentinel reads it back. When the master is killed, the Sentinel promotes a
/// replica (about 2–4 s with the defaults); a killed old primary, restarted, comes back as
/// an empty master and the Sentinel turns it into a replica of the new master about 8–10 s
/// later (Sentinel waits that long before it reconfigures an instance).
///
/// `init` returns once every replica's link to its primary is up (the primary streams to it) and
/// the Sentinel names the master and knows every replica. Replication stays asynchronous: a write
/// the primary acknowledged just before it died may be missing on the promoted replica. Every process dies with the process that started it,
/// even on SIGKILL (`ParentDeathGuard`); `shutdown()` stops them by PID.
public final class PrivateRedisReplicaSet: Sendable {
    /// The name the Sentinel knows the master by (`--redis-master` of the nodes).
    public let masterName: String
    /// `redis-1`: the master at the start (after a failover, a replica or down).
    public let primary: PrivateRedisServer
    /// `redis-2`...: replicas of `redis-1` at the start.
    public let replicas: [PrivateRedisServer]
    /// `sentinel-1`, when asked for.
    public let sentinel: PrivateRedisServer?
    /// Where the logs and the Sentinel's configuration file are.
    public let directory: String

    /// Starts the primary, the replicas, then the Sentinel, and waits until they are ready (see the type).
    /// On failure, stops what it started and throws an error naming the log to read.
    /// - Parameters:
    ///   - replicas: 0...5 replicas of the primary.
    ///   - sentinel: whether to start a Sentinel (it needs a replica to fail over to).
    ///   - directory: an existing directory for the logs and the Sentinel's configuration file.
    ///   - redisServer: redis-server; looked up in `PATH` and the usual places when nil.
    ///   - redisSentinel: what runs the Sentinel (with `--sentinel`); redis-sentinel, else redis-server, when nil.
    ///   - downAfterMillis, failoverTimeoutMillis: the Sentinel's `down-after-milliseconds` and `failover-timeout`.
    ///   - startTimeoutMillis: longest wait for the replicas' links and the Sentinel.
    public init(
        replicas: Int = 1, sentinel: Bool = true, masterName: String = "mymaster", directory: String,
        redisServer: String? = nil, redisSentinel: String? = nil, downAfterMillis: Int = 1_000,
        failoverTimeoutMillis: Int = 5_000, startTimeoutMillis: Int = 30_000
    ) throws(SupervisorError) {
        guard (0...5).contains(replicas) else { throw SupervisorError("replicas must be 0...5") }
        guard !sentinel || replicas >= 1 else { throw SupervisorError("a Sentinel needs at least one replica to fail over to") }
        guard downAfterMillis >= 100, failoverTimeoutMillis >= 1_000 else {
            throw SupervisorError("down-after must be at least 100 ms, the failover timeout at least 1000 ms")
        }
        guard masterName.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }), !masterName.isEmpty else {
            throw SupervisorError("the master name must be letters, digits, - or _")
        }
        self.masterName = masterName
        self.directory = directory
        var started: [PrivateRedisServer] = []
        do throws(SupervisorError) {
            // Any of them may become a master whose replicas sync: at once, not after the default 5 s wait for more.
            let syncAtOnce = ["--repl-diskless-sync-delay", "0"]
            let primary = try PrivateRedisServer(
                name: "redis-1", directory: directory, executable: redisServer, extraArguments: syncAtOnce)
            started.append(primary)
            for index in 0..<replicas {
                started.append(
                    try PrivateRedisServer(
                        name: "redis-\(index + 2)", directory: directory, executable: redisServer,
                        extraArguments: syncAtOnce + ["--replicaof", "127.0.0.1", "\(primary.port)"]))
            }
            // Before the Sentinel: its first INFO of the master then lists every replica.
            try Self.waitForReplicaLinks(Array(started.dropFirst()), of: primary, timeoutMillis: startTimeoutMillis)
            if sentinel {
                let port = try freeLoopbackPort()
                let configPath = "\(directory)/sentinel-\(port).conf"
                try Self.writeSentinelConfig(
                    at: configPath, port: port, directory: directory, masterName: masterName, masterPort: primary.port,
                    downAfterMillis: downAfterMillis, failoverTimeoutMillis: failoverTimeoutMillis)
                started.append(
                    try PrivateRedisServer(
                        name: "sentinel-1", port: port, directory: directory, executable: redisSentinel,
                        kind: .sentinel(configPath: configPath, masterName: masterName)))
            }
        } catch {
            for server in started { server.shutdown(graceMillis: 0) }
            throw error
        }
        self.primary = started[0]
        self.replicas = Array(started[1..<(1 + replicas)])
        self.sentinel = sentinel ? started.last : nil
        if let sentinelServer = self.sentinel {
            do throws(SupervisorError) {
                try waitForSentinel(sentinelServer, timeoutMillis: startTimeoutMillis)
            } catch {
                shutdown(graceMillis: 0)
                throw error
            }
        }
    }

    /// Every process, in order: `redis-1`, the replicas, then `sentinel-1`.
    public var servers: [PrivateRedisServer] { [primary] + replicas + (sentinel.map { [$0] } ?? []) }

    /// The PIDs of the processes running now.
    public var pids: [pid_t] { servers.compactMap(\.pid) }

    /// `host:port` of the master the Sentinel names now; nil without a Sentinel or when it does not answer.
    public func currentMaster(timeoutMillis: Int = 250) -> String? {
        sentinel.flatMap {
            PrivateRedisServer.masterAddress(sentinelPort: $0.port, masterName: masterName, timeoutMillis: timeoutMillis)
        }
    }

    /// Stops every process (SIGTERM, SIGKILL after `graceMillis`), by PID, the Sentinel first
    /// (so that it starts no failover meanwhile). Idempotent.
    public func shutdown(graceMillis: Int = 5_000) {
        for server in servers.reversed() { server.shutdown(graceMillis: graceMillis) }
    }

    // MARK: - Internals

    /// Waits until every replica reports `master_link_status:up` (its first sync is done), then
    /// until each has received a message published on the primary after that: after a diskless
    /// sync the primary holds back its command stream until the replica's first acknowledgement (up
    /// to a second later), and writes held back would be lost were it killed meanwhile.
    private static func waitForReplicaLinks(
        _ replicas: [PrivateRedisServer], of primary: PrivateRedisServer, timeoutMillis: Int
    ) throws(SupervisorError) {
        guard !replicas.isEmpty else { return }
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        func replication(_ server: PrivateRedisServer) -> [String: String] {
            RedisProbe.command(port: server.port, ["INFO", "replication"])?.text.map(RedisProbe.fields) ?? [:]
        }
        var streamedOffset: Int?  // the primary's offset after the check message
        while true {
            let lagging = replicas.first { replica in
                let info = replication(replica)
                guard info["master_link_status"] == "up" else { return true }
                guard let streamedOffset else { return false }
                return (info["slave_repl_offset"].flatMap { Int($0) } ?? -1) < streamedOffset
            }
            if lagging == nil {
                if streamedOffset != nil { return }
                // PUBLISH travels in the replication stream and stores nothing.
                _ = RedisProbe.command(port: primary.port, ["PUBLISH", "session-cluster:replica-check", "1"])
                streamedOffset = replication(primary)["master_repl_offset"].flatMap { Int($0) }
                continue
            }
            guard monotonicMillis() < deadline else {
                let name = lagging.map { "\($0.name) on port \($0.port)" } ?? "a replica"
                throw SupervisorError(
                    "\(name) did not sync with its primary in \(timeoutMillis) ms; see \(lagging?.logPath ?? primary.logPath)")
            }
            usleep(50_000)
        }
    }

    /// Waits until the Sentinel names the master and lists every replica (so it can fail over at once).
    private func waitForSentinel(_ sentinel: PrivateRedisServer, timeoutMillis: Int) throws(SupervisorError) {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while true {
            let master = currentMaster()
            var known = 0
            if case .array(let entries?) = RedisProbe.command(port: sentinel.port, ["SENTINEL", "replicas", masterName]) {
                known = entries.count
            }
            if master == primary.address && known == replicas.count { return }
            guard monotonicMillis() < deadline else {
                throw SupervisorError(
                    "\(sentinel.name) (Sentinel on port \(sentinel.port)) did not know the master and its replicas in "
                        + "\(timeoutMillis) ms (master: \(master ?? "none"), replicas: \(known) of \(replicas.count)); "
                        + "see \(sentinel.logPath)")
            }
            usleep(50_000)
        }
    }

    /// The Sentinel's configuration, written at the start (replacing any older one): Sentinel rewrites it later.
    private static func writeSentinelConfig(
        at path: String, port: Int, directory: String, masterName: String, masterPort: Int, downAfterMillis: Int,
        failoverTimeoutMillis: Int
    ) throws(SupervisorError) {
        let text = """
            port \(port)
            bind 127.0.0.1
            dir "\(directory)"
            sentinel monitor \(masterName) 127.0.0.1 \(masterPort) 1
            sentinel down-after-milliseconds \(masterName) \(downAfterMillis)
            sentinel failover-timeout \(masterName) \(failoverTimeoutMillis)

            """
        guard let file = fopen(path, "we") else {
            throw SupervisorError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        let written = fputs(text, file)
        guard fclose(file) == 0, written >= 0 else {
            throw SupervisorError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}
