#if canImport(Glibc)
import Glibc
#endif
import Balancer
import Logging
import MiniHTTP
import Synchronization
import SystemSupport

/// Starts and watches a local cluster: nodes as child processes, the balancer
/// in front, and for `redis` a private redis-server (`PrivateRedisServer`), for
/// `redis-cluster` a private Redis Cluster (`PrivateRedisCluster`). Reports deaths through
/// `onEvent`, restarts a node only when asked, and on `shutdown()` stops
/// everything it started, by PID.
///
/// Its control API is served by the balancer under `/_cluster/` (see `ControlAPI`):
/// the cluster's status, and kill (SIGKILL), stop (SIGSTOP), resume (SIGCONT)
/// and restart of each node; kill and restart of each redis-server.
public final class ClusterSupervisor: Sendable {
    public let configuration: ClusterConfiguration
    let logger: Logger
    let onEvent: @Sendable (String) -> Void
    let nodes: [NodeSlot]
    let runDirectory: String
    private let ownsRunDirectory: Bool
    private let environment: [String: String]
    private let redis = Mutex<RedisBackend?>(nil)
    /// The last status read from each redis-server (by the monitor), and the ones being restarted.
    private let redisState = Mutex<(status: [RedisNodeStatus], restarting: Set<String>)>(([], []))
    private let balancerBox = Mutex<Balancer?>(nil)
    let stopping = Atomic<Bool>(false)
    private let monitorDone = Mutex<Bool>(false)
    /// Held while a restart starts a node's new process, so that `shutdown()` either sees that
    /// process or the restart sees `stopping` and starts none.
    private let spawnGate = Mutex<Void>(())
    let rolling = Mutex(RollingRestartStatus())
    /// `relayedLinks`: the relay of each link, by "from>to" node names.
    let linkRelays: [String: LinkRelay]
    /// `relayedLinks` with the `redis` strategy: each node's link to its store, by "node>redis"
    /// (made once the server runs).
    let storeRelays = Mutex<[String: LinkRelay]>([:])

    /// - Parameter onEvent: one-line reports (a node died, came up, was restarted), from any thread.
    public init(
        configuration: ClusterConfiguration, logger: Logger, onEvent: @escaping @Sendable (String) -> Void = { _ in }
    ) throws(SupervisorError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        self.onEvent = onEvent
        if let directory = configuration.logDirectory {
            guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
                throw SupervisorError("cannot create \(directory): \(String(cString: strerror(errno)))")
            }
            runDirectory = directory
            ownsRunDirectory = false
        } else {
            var template = Array("/tmp/session-cluster-demo-XXXXXX".utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                throw SupervisorError("cannot create a temporary directory: \(String(cString: strerror(errno)))")
            }
            runDirectory = String(cString: made)
            ownsRunDirectory = true
        }
        var environment = [String: String]()
        for key in ["PATH", "HOME", "LANG", "TMPDIR"] {
            if let value = getenv(key) { environment[key] = String(cString: value) }
        }
        // The same secrets on every node: cookies signed by one are accepted by all, and peers trust each other.
        // 256 random bits each, base64url (a session ID's recipe).
        environment["SESSION_COOKIE_SECRET"] = secureRandomToken(byteCount: 32)
        environment["SESSION_CLUSTER_SECRET"] = secureRandomToken(byteCount: 32)
        self.environment = environment
        var slots: [NodeSlot] = []
        do throws(SupervisorError) {
            for index in 1...configuration.nodeCount {
                slots.append(
                    NodeSlot(
                        name: "node-\(index)", port: try freeLoopbackPort(),
                        replicationPort: configuration.strategy == .replicate ? try freeLoopbackPort() : 0))
            }
        } catch {
            if ownsRunDirectory { rmdir(runDirectory) }
            throw error
        }
        nodes = slots
        do throws(SupervisorError) {
            linkRelays = configuration.relayedLinks && configuration.strategy == .replicate ? try Self.makeLinkRelays(slots) : [:]
        } catch {
            if ownsRunDirectory { rmdir(runDirectory) }
            throw error
        }
    }

    /// The balancer's port (after `start()`).
    public var port: Int { balancerBox.withLock { $0?.port ?? 0 } }

    /// The balancer's statistics and backends (after `start()`).
    public var balancer: Balancer? { balancerBox.withLock { $0 } }

    /// The `Host` values the control API accepts (`ControlAPI.allowedHosts` for the balancer's address).
    public var controlHosts: [String] {
        // The configured port when there is one: known before the balancer is published in `balancerBox`.
        ControlAPI.allowedHosts(listenHost: configuration.host, port: configuration.port != 0 ? configuration.port : port)
    }

    /// The nodes' names, in order.
    public var nodeNames: [String] { nodes.map(\.name) }

    /// Each node's name and HTTP port, in order.
    public var nodePorts: [(name: String, port: Int)] { nodes.map { ($0.name, $0.port) } }

    /// The PIDs of the processes running now (nodes and redis-servers).
    public var childPIDs: [pid_t] {
        nodes.compactMap { $0.process }.filter(\.isRunning).map(\.pid) + redisServers.compactMap(\.pid)
    }

    /// The private redis-servers: one (`redis`) for the `redis` strategy (or `redis-1`, its replicas
    /// `redis-2`... and `sentinel-1` with `redisReplicas` or `redisSentinel`), the cluster's nodes for
    /// `redis-cluster`, none otherwise (and before `start()`).
    public var redisServers: [PrivateRedisServer] { redis.withLock { $0?.servers ?? [] } }

    /// The private primary, replicas and Sentinel, for the `redis` strategy with `redisReplicas` or
    /// `redisSentinel` (after `start()`).
    public var redisReplicaSet: PrivateRedisReplicaSet? {
        redis.withLock { if case .replicaSet(let set) = $0 { set } else { nil } }
    }

    /// The private Redis (after `start()`).
    var redisBackend: RedisBackend? { redis.withLock { $0 } }

    func setRedisBackend(_ backend: RedisBackend) { redis.withLock { $0 = backend } }

    /// The private Redis Cluster, for the `redis-cluster` strategy (after `start()`).
    public var redisCluster: PrivateRedisCluster? {
        redis.withLock { if case .cluster(let cluster) = $0 { cluster } else { nil } }
    }

    /// Each redis-server's status as the monitor last read it (about every half second), with
    /// `restarting` true while the control API restarts it.
    public var redisStatus: [(status: RedisNodeStatus, restarting: Bool)] {
        redisState.withLock { state in state.status.map { ($0, state.restarting.contains($0.name)) } }
    }

    /// The directory with the logs of the nodes (and Redis).
    public var logDirectoryPath: String { runDirectory }

    /// Starts Redis (if needed), the nodes, waits until every node answers /healthz,
    /// then starts the balancer and the monitor thread. On failure, stops what it started.
    public func start() throws(SupervisorError) {
        do throws(SupervisorError) {
            try startRedis()
            for node in nodes { try spawn(node) }
            let deadline = monotonicMillis() + Int64(configuration.startTimeoutMillis)
            for node in nodes {
                while !checkReady(node) {
                    if let ended = node.process?.exitStatus {
                        throw SupervisorError("\(node.name) \(ended) while starting; see \(logPath(node.name))")
                    }
                    guard monotonicMillis() < deadline else {
                        throw SupervisorError("\(node.name) did not answer /healthz in time; see \(logPath(node.name))")
                    }
                    usleep(50_000)
                }
            }
            var balancerConfiguration = configuration.balancer
            balancerConfiguration.host = configuration.host
            balancerConfiguration.port = configuration.port
            balancerConfiguration.backends = nodes.map {
                BackendConfiguration(name: $0.name, host: "127.0.0.1", port: $0.port)
            }
            let balancer: Balancer
            do {
                balancer = try Balancer(
                    configuration: balancerConfiguration, logger: logger,
                    localRoutes: [Balancer.LocalRoute(prefix: ControlAPI.prefix) { [weak self] head in
                        guard let self else { return .error(status: 503, code: "stopping", message: "the demo is stopping") }
                        return ControlAPI.respond(to: self, head: head)
                    }])
                try balancer.start()
            } catch {
                throw SupervisorError("cannot start the balancer on \(configuration.host):\(configuration.port): \(error)")
            }
            balancerBox.withLock { $0 = balancer }
        } catch {
            shutdown()
            throw error
        }
        startThread { [self] in monitor() }
    }

    /// Stops the balancer (letting requests in flight finish), the nodes (SIGTERM to all of them
    /// at once, then SIGKILL to those still running after 5 s) and the redis-servers, then removes
    /// the temporary log directory. A rolling restart in progress stops. Idempotent.
    public func shutdown() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        balancerBox.withLock { $0 }?.shutdown()
        spawnGate.withLock { _ in }  // a restart starting a node now finishes first; later ones start none
        let running = nodes.compactMap { node in node.process.map { (node, $0) } }
        let ended = SpawnedProcess.terminateAll(running.map(\.1), graceMillis: 5_000)
        for ((node, _), status) in zip(running, ended) {
            logger.debug("node stopped", metadata: ["node": "\(node.name)", "status": "\(status)"])
        }
        for server in redisServers { server.shutdown(graceMillis: 5_000) }
        for relay in linkRelays.values { relay.stop() }
        for relay in storeRelays.withLock({ Array($0.values) }) { relay.stop() }
        while !monitorDone.withLock({ $0 }) && balancerBox.withLock({ $0 }) != nil { usleep(10_000) }
        if ownsRunDirectory { removeTree(runDirectory) }
    }

    // MARK: - Control

    /// SIGKILL: the node dies at once, as in a crash; it stays dead until `restart`.
    public func kill(_ name: String) throws(SupervisorError) {
        let node = try running(name, for: "kill")
        guard let process = node.process else { return }
        node.update { $0.expectedExit = process.pid }
        process.send(SIGKILL)
        if let ended = process.waitForExit(timeoutMillis: 200) { noteExit(node, process, ended) }
    }

    /// SIGSTOP: the node freezes with its connections open, as in a long GC pause or a hung host.
    public func stop(_ name: String) throws(SupervisorError) {
        let node = try running(name, for: "stop")
        guard node.state != .stopped else { throw SupervisorError(kind: .conflict, "\(name) is already stopped") }
        if let process = node.process, process.send(SIGSTOP), !waitUntilProcessStopped(process.pid, timeoutMillis: 2_000) {
            // kill(2) returned, but a thread still runs: it stops when the kernel next schedules it.
            onEvent("\(name) got SIGSTOP but has not stopped within 2 s")
        }
        node.update { $0.state = .stopped }
        onEvent("\(name) stopped (SIGSTOP)")
    }

    /// SIGCONT after `stop`.
    public func resume(_ name: String) throws(SupervisorError) {
        let node = try slot(name)
        guard node.state == .stopped else { throw SupervisorError(kind: .conflict, "\(name) is not stopped") }
        node.process?.send(SIGCONT)
        node.update { $0.state = .running }
        onEvent("\(name) resumed (SIGCONT)")
    }

    /// Starts the node again, on the same ports (after SIGTERM when it still runs, SIGKILL after
    /// 5 s); returns at once.
    public func restart(_ name: String) throws(SupervisorError) {
        let node = try slot(name)
        let previous = try beginRestart(node)
        startThread { [self] in finishRestart(node, previous) }
    }

    /// Marks `node` restarting; the process to end first. Refused while stopping, and while the
    /// node is starting or restarting already.
    func beginRestart(_ node: NodeSlot) throws(SupervisorError) -> SpawnedProcess? {
        guard !stopping.load(ordering: .relaxed) else { throw SupervisorError(kind: .conflict, "the demo is stopping") }
        let (allowed, previous) = node.update { slot -> (Bool, SpawnedProcess?) in
            guard slot.state != .starting, slot.state != .restarting else { return (false, nil) }
            slot.state = .restarting
            slot.expectedExit = slot.process?.pid
            return (true, slot.process)
        }
        guard allowed else { throw SupervisorError(kind: .conflict, "\(node.name) is already starting") }
        return previous
    }

    /// Ends `previous` (SIGTERM, SIGKILL after 5 s) and starts the node again, unless the
    /// supervisor is stopping by then; true when the new process started.
    @discardableResult
    func finishRestart(_ node: NodeSlot, _ previous: SpawnedProcess?) -> Bool {
        if let previous { noteExit(node, previous, previous.terminate(graceMillis: 5_000)) }
        let failure = spawnGate.withLock { _ -> SupervisorError? in
            guard !stopping.load(ordering: .relaxed) else { return SupervisorError(kind: .conflict, "the demo is stopping") }
            do throws(SupervisorError) {
                try spawn(node)
                return nil
            } catch {
                return error
            }
        }
        if let failure {
            node.update { $0.state = .dead }
            if !stopping.load(ordering: .relaxed) { onEvent("\(node.name) could not restart: \(failure)") }
            return false
        }
        node.update { $0.restarts += 1 }
        onEvent("\(node.name) restarting (pid \(node.process?.pid ?? 0))")
        return true
    }

    /// SIGKILL the redis-server `name` (`redis`, or `redis-1`... of a replica set or cluster, or
    /// `sentinel-1`), as in a crash.
    public func killRedis(_ name: String) throws(SupervisorError) {
        let server = try redisServer(name)
        guard !redisState.withLock({ $0.restarting.contains(name) }) else {
            throw SupervisorError(kind: .conflict, "\(name) is restarting")
        }
        try server.kill()
        refreshRedisStatus()
    }

    /// Starts the redis-server `name` again on its port (after SIGKILL when it runs), in the
    /// background; returns at once. A cluster node rejoins with its `nodes.conf`; an old primary
    /// comes back empty and the Sentinel makes it a replica of the new master; a Sentinel reads
    /// back its rewritten configuration.
    public func restartRedis(_ name: String) throws(SupervisorError) {
        let server = try redisServer(name)
        guard !stopping.load(ordering: .relaxed) else { throw SupervisorError(kind: .conflict, "the demo is stopping") }
        guard redisState.withLock({ $0.restarting.insert(name).inserted }) else {
            throw SupervisorError(kind: .conflict, "\(name) is already restarting")
        }
        startThread { [self] in
            do throws(SupervisorError) {
                try server.restart()
                onEvent("\(name) restarted on 127.0.0.1:\(server.port) (pid \(server.pid ?? 0))")
            } catch {
                onEvent("\(name) could not restart: \(error)")
            }
            refreshRedisStatus()
            redisState.withLock { _ = $0.restarting.remove(name) }
        }
    }

    // MARK: - Internals

    func redisServer(_ name: String) throws(SupervisorError) -> PrivateRedisServer {
        let servers = redisServers
        guard let server = servers.first(where: { $0.name == name }) else {
            let names = servers.isEmpty ? "none (the strategy is \(configuration.strategy.rawValue))" : servers.map(\.name).joined(separator: ", ")
            throw SupervisorError(kind: .notFound, "no redis-server named '\(name)'; redis-servers: \(names)")
        }
        return server
    }

    /// Reads every redis-server's status into `redisState` (blocks: not on a balancer loop).
    func refreshRedisStatus() {
        let status = redis.withLock { $0 }.map { backend in backend.servers.map { $0.status() } } ?? []
        redisState.withLock { $0.status = status }
    }

    func slot(_ name: String) throws(SupervisorError) -> NodeSlot {
        guard let node = nodes.first(where: { $0.name == name }) else {
            throw SupervisorError(kind: .notFound, "no node named '\(name)'; nodes: \(nodeNames.joined(separator: ", "))")
        }
        return node
    }

    private func running(_ name: String, for action: String) throws(SupervisorError) -> NodeSlot {
        let node = try slot(name)
        let state = node.state
        guard state == .running || state == .stopped || state == .starting, node.process?.isRunning == true else {
            throw SupervisorError(kind: .conflict, "\(name) is not running; restart it first")
        }
        return node
    }

    func logPath(_ name: String) -> String { "\(runDirectory)/\(name).log" }

    private func spawn(_ node: NodeSlot) throws(SupervisorError) {
        let process = try SpawnedProcess(
            executable: configuration.executable, arguments: try nodeArguments(node) + configuration.extraNodeArguments,
            environment: environment, logPath: logPath(node.name))
        node.update {
            $0.process = process
            $0.state = .starting
            $0.sessions = nil
        }
        logger.debug("node started", metadata: ["node": "\(node.name)", "pid": "\(process.pid)"])
    }

    /// `session-cluster node ...` for `node` (its strategy's Redis must be running).
    func nodeArguments(_ node: NodeSlot) throws(SupervisorError) -> [String] {
        var arguments = [
            "node", "--host", "127.0.0.1", "--port", "\(node.port)", "--node-id", node.name,
            "--strategy", configuration.strategy == .redisCluster ? "redis" : configuration.strategy.rawValue,
            "--log-level", configuration.nodeLogLevel,
            "--parent-pid", "\(getpid())", "--drain-delay-ms", "\(configuration.nodeDrainDelayMillis)",
        ]
        switch configuration.strategy {
        case .replicate:
            arguments += replicationPeerArguments(node) + [
                "--replication-port", "\(node.replicationPort)", "--replication-mode", configuration.replicationMode,
            ]
        case .redis, .redisCluster:
            arguments += try redisNodeArguments(for: node.name)
        case .local:
            break
        }
        return arguments
    }

    /// One /healthz: a starting node that answers 200 becomes running.
    @discardableResult
    private func checkReady(_ node: NodeSlot) -> Bool {
        guard let answer = NodeProbe.get(port: node.port, path: "/healthz", timeoutMillis: 250),
            answer.status == 200
        else { return false }
        let becameReady = node.update { slot -> Bool in
            guard slot.state == .starting else { return false }
            slot.state = .running
            return true
        }
        if becameReady && balancerBox.withLock({ $0 }) != nil {
            onEvent("\(node.name) is up (pid \(node.process?.pid ?? 0))")
        }
        return true
    }

    /// Records the end of `process` (once), and reports it unless the supervisor caused it.
    private func noteExit(_ node: NodeSlot, _ process: SpawnedProcess, _ status: ExitStatus) {
        let report = node.update { slot -> String? in
            guard slot.process === process, slot.lastExitPID != process.pid else { return nil }
            slot.lastExit = status.description
            slot.lastExitPID = process.pid
            slot.sessions = nil
            if slot.state != .restarting { slot.state = .dead }
            let expected = slot.expectedExit == process.pid
            return expected ? "\(node.name) \(status)" : "\(node.name) \(status), unexpectedly; restart it when you like"
        }
        if let report, !stopping.load(ordering: .relaxed) { onEvent(report) }
    }

    /// Every 100 ms: reaps dead nodes and redis-servers and reports them; every ~250 ms checks
    /// starting nodes; every ~500 ms reads the redis-servers' status; every second reads each
    /// running node's session count from /metrics.
    private func monitor() {
        defer { monitorDone.withLock { $0 = true } }
        var tick = 0
        var redisDeathsReported = Set<pid_t>()
        while !stopping.load(ordering: .relaxed) {
            for node in nodes {
                guard let process = node.process else { continue }
                if let ended = process.exitStatus {
                    noteExit(node, process, ended)
                } else if node.state == .starting, tick % 2 == 0 {
                    checkReady(node)
                } else if node.state == .running, tick % 10 == 0,
                    let answer = NodeProbe.get(port: node.port, path: "/metrics", timeoutMillis: 250),
                    answer.status == 200
                {
                    let sessions = PrometheusText.sample("session_store_sessions", in: String(decoding: answer.body, as: UTF8.self))
                    let refusing = NodeProbe.get(port: node.port, path: "/healthz", timeoutMillis: 250).flatMap(NodeProbe.refusal)
                    node.update {
                        $0.sessions = sessions
                        $0.refusing = refusing
                    }
                }
            }
            for server in redisServers {
                guard let process = server.process, let ended = process.exitStatus, !stopping.load(ordering: .relaxed),
                    redisDeathsReported.insert(process.pid).inserted,
                    !redisState.withLock({ $0.restarting.contains(server.name) })  // a restart's own kill
                else { continue }
                let consequence = redisDeathConsequence(server)
                onEvent(
                    "\(server.name) (\(server.kind == .server ? "redis-server" : "Sentinel"), pid \(process.pid)) \(ended); \(consequence) "
                        + "(restart it from the dashboard or: curl -X POST -H 'X-Cluster-Control: 1' "
                        + "http://\(controlHosts.first ?? "127.0.0.1")/_cluster/redis/\(server.name)/restart)")
            }
            if tick % 5 == 0 { refreshRedisStatus() }
            tick += 1
            usleep(100_000)
        }
    }
}

/// Removes the files of a flat directory, then the directory.
private func removeTree(_ path: String) {
    guard let dir = opendir(path) else { return }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { unlink("\(path)/\(name)") }
    }
    closedir(dir)
    rmdir(path)
}
