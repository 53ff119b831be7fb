#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SystemSupport

/// A private Redis Cluster on loopback: `primaries` × (1 + `replicasPerPrimary`)
/// redis-servers (default 3 × 2: three primaries, one replica each), named
/// `redis-1`... in the order given to `redis-cli --cluster create` (so the
/// primaries come first), each on a free 127.0.0.1 port with its cluster bus on
/// another (`--cluster-port`: Redis 7.0 or later), no persistence, its
/// `nodes-<port>.conf` and log in `directory`.
///
/// `init` returns once every node reports `cluster_state:ok`, knows every other
/// node, and all 16384 slots are assigned. Each node can be killed (SIGKILL) and
/// restarted on its port with its `nodes.conf`: it rejoins, as a replica of the
/// node that took its slots over if a failover happened meanwhile. Every
/// redis-server dies with the process that started it, even on SIGKILL
/// (`ParentDeathGuard`); `shutdown()` stops them by PID.
public final class PrivateRedisCluster: Sendable {
    /// Its nodes, `redis-1`...: the first `primaries` were created as primaries.
    public let servers: [PrivateRedisServer]
    public let primaries: Int
    public let replicasPerPrimary: Int
    /// `--cluster-node-timeout`: how long a node may not answer before it counts as failing.
    public let nodeTimeoutMillis: Int
    public let directory: String

    /// Starts the servers, creates the cluster with redis-cli and waits until it is healthy.
    /// On failure, stops what it started and throws an error naming the log to read.
    /// - Parameters:
    ///   - directory: an existing directory for the logs and `nodes-<port>.conf` files.
    ///   - redisServer, redisCLI: looked up in `PATH` and the usual places when nil.
    ///   - startTimeoutMillis: longest wait for the cluster to become healthy after `redis-cli --cluster create`.
    public init(
        primaries: Int = 3, replicasPerPrimary: Int = 1, nodeTimeoutMillis: Int = 1_000, directory: String,
        redisServer: String? = nil, redisCLI: String? = nil, startTimeoutMillis: Int = 30_000
    ) throws(SupervisorError) {
        guard primaries >= 3 else { throw SupervisorError("a Redis Cluster needs at least 3 primaries") }
        guard (0...5).contains(replicasPerPrimary) else { throw SupervisorError("replicas per primary must be 0...5") }
        guard nodeTimeoutMillis >= 100 else { throw SupervisorError("the cluster node timeout must be at least 100 ms") }
        guard let cli = redisCLI ?? PrivateRedisServer.findExecutable("redis-cli") else {
            throw SupervisorError("redis-cli is not installed: sudo apt-get install redis-tools")
        }
        self.primaries = primaries
        self.replicasPerPrimary = replicasPerPrimary
        self.nodeTimeoutMillis = nodeTimeoutMillis
        self.directory = directory
        var servers: [PrivateRedisServer] = []
        do throws(SupervisorError) {
            for index in 1...(primaries * (1 + replicasPerPrimary)) {
                let port = try freeLoopbackPort()
                let busPort = try freeLoopbackPort()
                servers.append(
                    try PrivateRedisServer(
                        name: "redis-\(index)", port: port, directory: directory, executable: redisServer,
                        extraArguments: [
                            "--cluster-enabled", "yes", "--cluster-config-file", "\(directory)/nodes-\(port).conf",
                            "--cluster-node-timeout", "\(nodeTimeoutMillis)", "--cluster-port", "\(busPort)",
                            // A replica takes over however long ago it last heard from its primary (the default
                            // refuses when its copy may be stale; here availability is what the demo shows).
                            "--cluster-replica-validity-factor", "0",
                        ]))
            }
            try Self.create(servers, replicas: replicasPerPrimary, cli: cli, directory: directory)
        } catch {
            for server in servers { server.shutdown(graceMillis: 0) }
            throw error
        }
        self.servers = servers
        do throws(SupervisorError) {
            try waitUntilHealthy(timeoutMillis: startTimeoutMillis)
            try waitUntilReplicating(timeoutMillis: startTimeoutMillis)
        } catch {
            shutdown()
            throw error
        }
    }

    /// `127.0.0.1:port` of every node, in order: what a cluster client starts from.
    public var seeds: [String] { servers.map(\.address) }

    /// The nodes' names, in order.
    public var nodeNames: [String] { servers.map(\.name) }

    /// The PIDs of the redis-servers running now.
    public var pids: [pid_t] { servers.compactMap(\.pid) }

    /// The node named `name`; throws (`notFound`) for another name.
    public func server(_ name: String) throws(SupervisorError) -> PrivateRedisServer {
        guard let server = servers.first(where: { $0.name == name }) else {
            throw SupervisorError(kind: .notFound, "no Redis node named '\(name)'; nodes: \(nodeNames.joined(separator: ", "))")
        }
        return server
    }

    /// SIGKILL the node `name`, as in a crash (its replica takes over after about the node timeout).
    public func kill(_ name: String) throws(SupervisorError) { try server(name).kill() }

    /// Starts the node `name` again on its port with its `nodes.conf`: it rejoins the cluster.
    public func restart(_ name: String) throws(SupervisorError) { try server(name).restart() }

    /// Every node's status, read from it (a down node answers nothing: `up` false).
    public func status(timeoutMillis: Int = 250) -> [RedisNodeStatus] { servers.map { $0.status(timeoutMillis: timeoutMillis) } }

    /// Stops every redis-server (SIGTERM, SIGKILL after `graceMillis`), by PID. Idempotent.
    public func shutdown(graceMillis: Int = 5_000) {
        for server in servers { server.shutdown(graceMillis: graceMillis) }
    }

    /// Waits until every running node reports `cluster_state:ok`, 16384 slots assigned
    /// and every node known, and every replica's link to its primary is up;
    /// throws after `timeoutMillis` with what was missing.
    public func waitUntilHealthy(timeoutMillis: Int) throws(SupervisorError) {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while true {
            let missing = servers.filter(\.isRunning).compactMap { server -> String? in
                guard let text = RedisProbe.command(port: server.port, ["CLUSTER", "INFO"])?.text else {
                    return "\(server.name) does not answer CLUSTER INFO"
                }
                let info = RedisProbe.fields(text)
                guard info["cluster_state"] == "ok" else { return "\(server.name): cluster_state:\(info["cluster_state"] ?? "?")" }
                guard info["cluster_slots_assigned"] == "16384" else {
                    return "\(server.name): cluster_slots_assigned:\(info["cluster_slots_assigned"] ?? "?")"
                }
                guard info["cluster_known_nodes"] == "\(servers.count)" else {
                    return "\(server.name): cluster_known_nodes:\(info["cluster_known_nodes"] ?? "?") of \(servers.count)"
                }
                // A replica still in its first sync would lose what its primary took meanwhile, and acknowledge no WAIT.
                guard let replication = RedisProbe.command(port: server.port, ["INFO", "replication"])?.text else {
                    return "\(server.name) does not answer INFO replication"
                }
                let role = RedisProbe.fields(replication)
                if role["role"] == "slave" && role["master_link_status"] != "up" {
                    return "\(server.name): replica link \(role["master_link_status"] ?? "?")"
                }
                return nil
            }
            if missing.isEmpty { return }
            guard monotonicMillis() < deadline else {
                throw SupervisorError(
                    "the Redis Cluster was not healthy after \(timeoutMillis) ms (\(missing.joined(separator: "; "))); "
                        + "see the logs in \(directory)")
            }
            usleep(50_000)
        }
    }

    /// Waits until every replica has applied a write made on its primary after
    /// the cluster came up. A replica reports its link up after its first sync,
    /// but its primary streams writes to it only after the replica's first
    /// acknowledgement, up to a second later: a primary killed in between would
    /// take what it was sent meanwhile with it.
    private func waitUntilReplicating(timeoutMillis: Int) throws(SupervisorError) {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        let replicas = servers.compactMap { server -> (replica: PrivateRedisServer, primaryPort: Int)? in
            guard let text = RedisProbe.command(port: server.port, ["INFO", "replication"])?.text else { return nil }
            let info = RedisProbe.fields(text)
            guard info["role"] == "slave", let port = info["master_port"].flatMap(Int.init) else { return nil }
            return (server, port)
        }
        for primaryPort in Set(replicas.map(\.primaryPort)) {
            // A write in one of this primary's slots (a key of another slot is MOVED: try the next).
            var key = 0
            while RedisProbe.command(port: primaryPort, ["SET", "session-cluster:probe:\(key)", "1", "PX", "5000"]) != .simple("OK") {
                key += 1
                guard key < 10_000, monotonicMillis() < deadline else {
                    throw SupervisorError("the primary on port \(primaryPort) took no write; see the logs in \(directory)")
                }
            }
            guard let text = RedisProbe.command(port: primaryPort, ["INFO", "replication"])?.text,
                let written = RedisProbe.fields(text)["master_repl_offset"].flatMap(Int.init)
            else { throw SupervisorError("the primary on port \(primaryPort) does not answer INFO replication") }
            for (replica, port) in replicas where port == primaryPort {
                while (RedisProbe.command(port: replica.port, ["INFO", "replication"])?.text)
                    .flatMap({ RedisProbe.fields($0)["slave_repl_offset"] }).flatMap(Int.init) ?? -1 < written
                {
                    guard monotonicMillis() < deadline else {
                        throw SupervisorError(
                            "\(replica.name) did not receive its primary's writes in \(timeoutMillis) ms; see the logs in \(directory)")
                    }
                    usleep(20_000)
                }
            }
        }
    }

    /// `redis-cli --cluster create ... --cluster-replicas R --cluster-yes`; its output goes to `cluster-create.log`.
    private static func create(
        _ servers: [PrivateRedisServer], replicas: Int, cli: String, directory: String
    ) throws(SupervisorError) {
        let log = "\(directory)/cluster-create.log"
        let process = try SpawnedProcess(
            executable: cli,
            arguments: ["--cluster", "create"] + servers.map(\.address) + ["--cluster-replicas", "\(replicas)", "--cluster-yes"],
            environment: [:], logPath: log)
        guard let ended = process.waitForExit(timeoutMillis: 60_000) else {
            process.terminate(graceMillis: 0)
            throw SupervisorError("redis-cli --cluster create did not finish in 60 s; see \(log)")
        }
        guard ended == .exited(code: 0) else { throw SupervisorError("redis-cli --cluster create \(ended); see \(log)") }
    }
}
