#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import Synchronization
import SystemSupport

/// One private redis-server on a loopback port: no persistence, its files in a
/// run directory, its output in `<directory>/<name>.log`. It can be killed
/// (SIGKILL, as in a crash) and restarted on the same port with the same
/// arguments (for a cluster node, the same `nodes.conf`, so it rejoins).
///
/// It dies with the process that started it, even when that process is killed
/// with SIGKILL (see `ParentDeathGuard`); `shutdown()` stops it by PID.
///
/// It can also run a Sentinel (`Kind.sentinel`): started from its configuration
/// file (which Sentinel rewrites, so a restart keeps what it learnt).
public final class PrivateRedisServer: Sendable {
    /// What the process is.
    public enum Kind: Sendable, Equatable {
        /// A redis-server holding data.
        case server
        /// A Sentinel (`<configPath> --sentinel`) watching the master it knows as `masterName`; its port and
        /// address are set in its configuration file, which must be writable.
        case sentinel(configPath: String, masterName: String)
    }

    /// The name shown in status and used by the control API (`redis`, or `redis-1`... in a cluster).
    public let name: String
    /// A redis-server or a Sentinel.
    public let kind: Kind
    public let port: Int
    /// The redis-server executable.
    public let executable: String
    /// Where its files (log, `nodes.conf` of a cluster node) go; it must exist.
    public let directory: String
    /// Its stdout and stderr, across restarts.
    public let logPath: String
    /// Whether it runs with `--cluster-enabled yes` (its status then includes role and slots).
    public let clusterEnabled: Bool
    private let arguments: [String]
    private let startTimeoutMillis: Int
    private let current = Mutex<Running?>(nil)

    private struct Running {
        let process: SpawnedProcess
        let guardian: ParentDeathGuard
    }

    /// Starts redis-server on 127.0.0.1:`port` (a free one when nil) and waits until it answers PING.
    /// - Parameters:
    ///   - port: for a Sentinel, the port its configuration file sets (it cannot be nil then).
    ///   - executable: redis-server; looked up in `PATH` and the usual places when nil (for a Sentinel,
    ///     redis-sentinel, else redis-server: both run it with `--sentinel`).
    ///   - extraArguments: more `--option value` pairs (e.g. cluster mode), after the defaults (a data server only).
    ///   - kind: a data server, or a Sentinel.
    ///   - startTimeoutMillis: longest wait for the first PONG, at every (re)start.
    public init(
        name: String = "redis", port: Int? = nil, directory: String, executable: String? = nil,
        extraArguments: [String] = [], kind: Kind = .server, startTimeoutMillis: Int = 10_000
    ) throws(SupervisorError) {
        var found = executable
        if found == nil, case .sentinel = kind { found = Self.findExecutable("redis-sentinel") }
        guard let executable = found ?? Self.findExecutable("redis-server") else {
            throw SupervisorError(
                "redis-server is not installed: sudo apt-get install redis-server (or use --strategy replicate, which needs nothing)")
        }
        if case .sentinel = kind, port == nil || !extraArguments.isEmpty {
            throw SupervisorError("a Sentinel takes its port and options from its configuration file")
        }
        self.name = name
        self.kind = kind
        if let port { self.port = port } else { self.port = try freeLoopbackPort() }
        self.executable = executable
        self.directory = directory
        self.logPath = "\(directory)/\(name).log"
        self.clusterEnabled = extraArguments.contains("--cluster-enabled")
        self.startTimeoutMillis = startTimeoutMillis
        switch kind {
        case .server:
            self.arguments =
                [
                    "--port", "\(self.port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory,
                    "--dbfilename", "dump-\(self.port).rdb",  // a replica's full sync writes one: not shared with others
                ] + extraArguments
        case .sentinel(let configPath, _):
            self.arguments = [configPath, "--sentinel"]
        }
        try start()
    }

    /// The PID of the process running now; nil when it is down.
    public var pid: pid_t? { current.withLock { $0 }.flatMap { $0.process.isRunning ? $0.process.pid : nil } }

    /// Whether its process runs (it may still be starting or frozen: see `status()` for an answer).
    public var isRunning: Bool { pid != nil }

    /// The process started last (running or ended), to see how it ended.
    public var process: SpawnedProcess? { current.withLock { $0?.process } }

    /// `host:port` for clients.
    public var address: String { "127.0.0.1:\(port)" }

    /// SIGKILL, as in a crash; waits until it has ended. Throws (`conflict`) when it is not running.
    public func kill() throws(SupervisorError) {
        guard let running = current.withLock({ $0 }), running.process.send(SIGKILL) else {
            throw SupervisorError(kind: .conflict, "\(name) is not running; restart it first")
        }
        running.guardian.dismiss()  // after the signal, before the reaping: its PID is still ours
        running.process.waitForExit(timeoutMillis: 5_000)
    }

    /// Starts it again on the same port with the same arguments (after SIGKILL when it still
    /// runs) and waits until it answers PING.
    public func restart() throws(SupervisorError) {
        if let running = current.withLock({ $0 }) { stop(running, graceMillis: 0) }
        try start()
    }

    /// SIGTERM, then SIGKILL after `graceMillis`; waits until it has ended. Idempotent.
    public func shutdown(graceMillis: Int = 5_000) {
        if let running = current.withLock({ $0 }) { stop(running, graceMillis: graceMillis) }
    }

    /// Its status, read from the server itself (blocks up to about 3 × `timeoutMillis`).
    public func status(timeoutMillis: Int = 250) -> RedisNodeStatus {
        var status = RedisNodeStatus(name: name, port: port, pid: pid)
        guard status.pid != nil else { return status }
        if case .sentinel(_, let masterName) = kind {
            status.up = RedisProbe.answersPing(port: port, timeoutMillis: timeoutMillis)
            status.role = status.up ? "sentinel" : nil
            status.master = Self.masterAddress(sentinelPort: port, masterName: masterName, timeoutMillis: timeoutMillis)
            return status
        }
        if clusterEnabled {
            guard let nodes = RedisProbe.command(port: port, ["CLUSTER", "NODES"], timeoutMillis: timeoutMillis)?.text,
                let myself = RedisNodeStatus.ownLine(clusterNodes: nodes)
            else { return status }
            status.role = myself.role
            status.slots = myself.slots
            status.clusterState = RedisProbe.command(port: port, ["CLUSTER", "INFO"], timeoutMillis: timeoutMillis)?.text
                .flatMap { RedisProbe.fields($0)["cluster_state"] }
        } else {
            guard let info = RedisProbe.command(port: port, ["INFO", "replication"], timeoutMillis: timeoutMillis)?.text
            else { return status }
            let fields = RedisProbe.fields(info)
            status.role = fields["role"] == "slave" ? "replica" : "master"
            if status.role == "replica", let host = fields["master_host"], let masterPort = fields["master_port"] {
                status.master = "\(host):\(masterPort)"
            }
        }
        if case .integer(let keys) = RedisProbe.command(port: port, ["DBSIZE"], timeoutMillis: timeoutMillis) {
            status.keys = keys
            status.up = true
        }
        return status
    }

    /// `host:port` of the master a Sentinel on `sentinelPort` names for `masterName`
    /// (`SENTINEL get-master-addr-by-name`); nil when it does not answer or knows no such master.
    public static func masterAddress(sentinelPort: Int, masterName: String, timeoutMillis: Int = 250) -> String? {
        guard
            case .array(let parts?) = RedisProbe.command(
                port: sentinelPort, ["SENTINEL", "get-master-addr-by-name", masterName], timeoutMillis: timeoutMillis),
            parts.count == 2, let host = parts[0].text, let port = parts[1].text
        else { return nil }
        return "\(host):\(port)"
    }

    /// redis-server, redis-cli...: the first executable of that name in `PATH`, /usr/bin, /usr/sbin or /usr/local/bin.
    public static func findExecutable(_ name: String) -> String? {
        let path = getenv("PATH").map { String(cString: $0) } ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        return dirs.map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    // MARK: - Internals

    private func start() throws(SupervisorError) {
        let process = try SpawnedProcess(
            executable: executable, arguments: arguments, environment: Self.environment, logPath: logPath)
        let guardian: ParentDeathGuard
        do {
            guardian = try ParentDeathGuard(protecting: process.pid, logPath: logPath)
        } catch {
            process.send(SIGKILL)
            process.waitForExit(timeoutMillis: 5_000)
            throw SupervisorError(error.description)
        }
        let running = Running(process: process, guardian: guardian)
        current.withLock { $0 = running }
        let deadline = monotonicMillis() + Int64(startTimeoutMillis)
        while !RedisProbe.answersPing(port: port) {
            if let ended = process.exitStatus {
                guardian.dismiss()
                throw SupervisorError("\(name) (\(kind == .server ? "redis-server" : "Sentinel") on port \(port)) \(ended) while starting; see \(logPath)")
            }
            guard monotonicMillis() < deadline else {
                stop(running, graceMillis: 0)
                throw SupervisorError(
                    "\(name) (\(kind == .server ? "redis-server" : "Sentinel") on port \(port)) did not answer PING in \(startTimeoutMillis) ms; see \(logPath)")
            }
            usleep(20_000)
        }
    }

    /// Signals first, dismisses the guard while the PID cannot have been reused (not reaped yet), then waits.
    private func stop(_ running: Running, graceMillis: Int) {
        if graceMillis > 0 {
            if running.process.send(SIGTERM) { running.process.send(SIGCONT) }
        } else {
            running.process.send(SIGKILL)
        }
        running.guardian.dismiss()
        running.process.terminate(graceMillis: graceMillis)
    }

    private static var environment: [String: String] {
        var environment: [String: String] = [:]
        for key in ["PATH", "HOME", "LANG", "TMPDIR"] {
            if let value = getenv(key) { environment[key] = String(cString: value) }
        }
        return environment
    }
}

/// One redis-server's state as read from it (`PrivateRedisServer.status()`).
public struct RedisNodeStatus: Sendable, Equatable {
    public var name: String
    public var port: Int
    /// nil when its process is not running.
    public var pid: pid_t?
    /// Whether it answered (DBSIZE).
    public var up = false
    /// `master`, `replica` or `sentinel`; nil when down.
    public var role: String?
    /// `host:port` of the master: a replica's (INFO replication), or the one a Sentinel names; nil otherwise.
    public var master: String?
    /// Hash slots it serves (cluster mode; nil otherwise or when down).
    public var slots: Int?
    /// Keys it holds (DBSIZE); nil when down.
    public var keys: Int?
    /// `ok` or `fail` as it sees the cluster (cluster mode; nil otherwise or when down).
    public var clusterState: String?

    public init(name: String, port: Int, pid: pid_t?) {
        self.name = name
        self.port = port
        self.pid = pid
    }

    /// The role and slot count in the `myself` line of `CLUSTER NODES`.
    static func ownLine(clusterNodes: String) -> (role: String, slots: Int)? {
        for line in clusterNodes.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 8 else { continue }
            let flags = fields[2].split(separator: ",")
            guard flags.contains("myself") else { continue }
            var slots = 0
            for range in fields.dropFirst(8) where !range.hasPrefix("[") {
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                if bounds.count == 2 { slots += bounds[1] - bounds[0] + 1 } else if bounds.count == 1 { slots += 1 }
            }
            return (flags.contains("slave") ? "replica" : "master", slots)
        }
        return nil
    }
}
