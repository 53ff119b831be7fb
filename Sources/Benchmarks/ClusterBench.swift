#if canImport(Glibc)
import Glibc
#endif
import ClusterSupervisor
import FailoverBench
import Foundation
import Logging
import Synchronization

/// The failover benchmark's runs: against a cluster of one strategy that it
/// starts (nodes behind the balancer, like `demo`) and stops, or against a
/// running target, with the faults carried out by the supervisor or a shell
/// command. The CLI's `bench` parses the options and calls these.
public struct ClusterBench: Sendable {
    /// The length of each run.
    public var durationMillis: Int
    /// Closed loop (think time) or a fixed arrival rate.
    public var pacing: Pacing
    /// Simulated users.
    public var users = 200
    /// Nodes per cluster.
    public var nodes = 3
    /// Client threads.
    public var threads = 1
    /// Longest wait for one answer.
    public var timeoutMillis = 2_000
    /// Writes carry an Idempotency-Key (a failed one is retried once with it).
    public var idempotencyKeys = true
    /// redis, redis-cluster: replicas that must acknowledge each session write (Redis WAIT).
    public var redisWaitReplicas = 0
    /// redis-cluster: replicas per primary of the private cluster.
    public var redisClusterReplicas = 1
    /// The nodes' log level.
    public var nodeLogLevel = "warning"
    /// Keep the nodes' logs in this directory, one folder per strategy.
    public var nodeLogs: String?
    /// Extra arguments for every node.
    public var nodeArguments: [String] = []
    /// The `session-cluster` executable the clusters' nodes run (`node` subcommand):
    /// this process's own, by default.
    public var executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path

    public init(durationMillis: Int, pacing: Pacing) {
        self.durationMillis = durationMillis
        self.pacing = pacing
    }

    /// The cluster strategy and replication mode of a strategy name of `--strategies`, or nil.
    public static func clusterStrategy(_ name: String) -> (ClusterConfiguration.Strategy, String)? {
        switch name {
        case "replicate-async", "replicate": (.replicate, "async")
        case "replicate-sync": (.replicate, "sync")
        case "redis": (.redis, "async")
        case "redis-cluster": (.redisCluster, "async")
        case "local": (.local, "async")
        default: nil
        }
    }

    /// Starts the strategy's cluster, measures it, stops it.
    public func measureCluster(
        _ name: String, plan: FaultPlan, logger: Logger
    ) throws -> StrategyResult {
        guard let (strategy, mode) = Self.clusterStrategy(name) else { throw BenchFailure("unknown strategy '\(name)'") }
        let usesRedis = strategy == .redis || strategy == .redisCluster
        var configuration = ClusterConfiguration(
            strategy: strategy, replicationMode: mode, nodeCount: nodes, port: 0,
            executable: executable, nodeLogLevel: nodeLogLevel,
            extraNodeArguments: nodeArguments
                + (usesRedis && redisWaitReplicas > 0 ? ["--redis-wait-replicas", "\(redisWaitReplicas)"] : []))
        configuration.redisClusterReplicas = redisClusterReplicas
        configuration.balancer.eventLoops = 1
        if let nodeLogs {
            guard mkdir(nodeLogs, 0o755) == 0 || errno == EEXIST else {
                throw BenchFailure("--node-logs: cannot create \(nodeLogs): \(String(cString: strerror(errno)))")
            }
            configuration.logDirectory = "\(nodeLogs)/\(name)"
        }
        let linkFaults = plan.faults.contains { [.partition, .isolate, .slowLink].contains($0.kind) }
        if linkFaults && (strategy == .local || strategy == .redisCluster) {
            throw BenchFailure(
                "\(name): partition, isolate and slow-link faults act on the links between nodes (replicate-*) and to the store (redis, one server); "
                    + (strategy == .local ? "local nodes have none" : "a Redis Cluster's own bus cannot be cut per link yet"))
        }
        configuration.relayedLinks = linkFaults
        let supervisor: ClusterSupervisor
        do {
            supervisor = try ClusterSupervisor(configuration: configuration, logger: logger) { event in
                FileHandle.standardError.write(Data("\r\u{1B}[K  [\(name)] \(event)\n".utf8))
            }
            FileHandle.standardError.write(Data("== \(name): starting \(nodes) nodes\n".utf8))
            try supervisor.start()
        } catch {
            throw BenchFailure("\(name): \(error)")
        }
        defer { supervisor.shutdown() }
        let redisNames = supervisor.redisServers.map(\.name)
        // The supervisor's names (node-2 for node2), as the nodes report them in X-Served-By; a
        // rolling restart of the whole cluster restarts its nodes in their order.
        let resolved = plan.mappingNodes(Self.nodeName).resolvingRolling(nodes: supervisor.nodeNames)
        for fault in resolved.faults {
            let named: [String]
            switch fault.kind {
            case .rolling: named = fault.nodes ?? []
            case .partition, .slowLink: named = Array((fault.groups ?? []).joined())
            default: named = [fault.node]
            }
            for node in named {
                if fault.kind == .stop && !supervisor.nodeNames.contains(node) && node.hasPrefix("redis") {
                    throw BenchFailure("fault '\(fault)': stop windows are for nodes; a redis-server can be killed and restarted")
                }
                if supervisor.nodeNames.contains(node) || redisNames.contains(node) { continue }
                if strategy == .redisCluster, node.hasPrefix("redis-primary-"), let n = Int(node.dropFirst(14)),
                    (1...configuration.redisClusterPrimaries).contains(n)
                { continue }
                throw BenchFailure(
                    "fault on '\(node)': the cluster has \((supervisor.nodeNames + redisNames).joined(separator: ", "))"
                        + (strategy == .redisCluster ? ", redis-primary-1..\(configuration.redisClusterPrimaries)" : ""))
            }
        }
        let target = try BenchTarget(baseURL: "http://127.0.0.1:\(supervisor.port)")
        // Every node should hold every session once the load stops: read each from each (`local` keeps its own).
        let nodesToCompare = strategy == .local ? [] : supervisor.nodePorts.map { BenchNode(name: $0.name, port: $0.port) }
        return try measure(
            name: name, target: target, plan: resolved, injector: SupervisorFaultInjector(supervisor: supervisor),
            slowStartMillis: configuration.balancer.healthCheck?.slowStartMillis ?? 0,
            convergenceNodes: nodesToCompare, logger: logger)
    }

    /// Measures `target` under `plan`, carrying out the faults with `injector` (nil: only marked).
    public func measure(
        name: String, target: BenchTarget, plan: FaultPlan, injector: (any FaultInjector)?, slowStartMillis: Int = 0,
        convergenceNodes: [BenchNode] = [], logger: Logger
    ) throws -> StrategyResult {
        var configuration = BenchConfiguration(
            target: target, users: users, durationSeconds: Double(durationMillis) / 1000, pacing: pacing,
            requestTimeoutMillis: timeoutMillis, threads: threads, faults: plan, idempotencyKeys: idempotencyKeys,
            slowStartMillis: slowStartMillis)
        configuration.convergenceNodes = convergenceNodes
        let runner: BenchRunner
        do {
            runner = try BenchRunner(configuration: configuration, injector: injector, logger: logger) { progress in
                FileHandle.standardError.write(Data("\r\u{1B}[K  \(progress.line)".utf8))
            }
        } catch {
            throw BenchFailure("\(error)")
        }
        let result = runner.run(name: name)
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
        return result
    }

    /// `node2` is accepted for `node-2`.
    public static func nodeName(_ name: String) -> String {
        guard name.hasPrefix("node"), !name.hasPrefix("node-"), Int(name.dropFirst(4)) != nil else { return name }
        return "node-" + name.dropFirst(4)
    }
}

/// Faults carried out by the cluster supervisor on its own nodes and redis-servers.
public final class SupervisorFaultInjector: FaultInjector {
    public let supervisor: ClusterSupervisor
    /// Which server each `redis-primary-N` named when first used (so `restart:redis-primary-1` restarts the one killed).
    private let primaryNames = Mutex<[String: String]>([:])

    public init(supervisor: ClusterSupervisor) {
        self.supervisor = supervisor
    }

    public func apply(_ action: FaultAction, node: String) throws {
        let name = ClusterBench.nodeName(node)
        switch (action, name.hasPrefix("redis")) {
        case (.partition, _):
            // The plan's names are the supervisor's already (`FaultPlan.mappingNodes`).
            guard let groups = Fault.partitionGroups(node) else { throw BenchFailure("malformed partition '\(node)'") }
            try supervisor.partition(groups)
        case (.heal, _): supervisor.healPartition()
        case (.slow, _), (.unslow, _):
            guard let link = Fault.slowLink(node) else { throw BenchFailure("malformed slow link '\(node)'") }
            let slow = action == .slow
            try supervisor.slowLink(
                link.a, link.b, latencyMillis: slow ? link.latencyMillis : 0, lossPercent: slow ? link.lossPercent : 0)
        case (.kill, true): try supervisor.killRedis(try redisServer(name))
        case (.restart, true): try supervisor.restartRedis(try redisServer(name))
        case (.stop, true), (.resume, true):
            throw BenchFailure("stop windows are for nodes; a redis-server can be killed and restarted")
        case (.kill, false): try supervisor.kill(name)
        case (.stop, false): try supervisor.stop(name)
        case (.resume, false): try supervisor.resume(name)
        case (.restart, false): try supervisor.restart(name)
        }
    }
}

/// Faults carried out by a shell command (for clusters the benchmark did not start).
public struct ShellFaultInjector: FaultInjector {
    public let command: String

    public init(command: String) { self.command = command }

    public func apply(_ action: FaultAction, node: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        var environment = ProcessInfo.processInfo.environment
        environment["FAULT_ACTION"] = action.rawValue
        environment["FAULT_NODE"] = node
        process.environment = environment
        // Not the benchmark's own stdout/stderr: a command that leaves a process behind (a restarted
        // node) would keep them open. Its exit status is what counts.
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchFailure("fault command exited with status \(process.terminationStatus) for \(action.rawValue) \(node)")
        }
    }
}

extension SupervisorFaultInjector {
    /// `redis-primary-N`: the Nth of the redis-servers that are primaries now (in name order); other names as they are.
    private func redisServer(_ name: String) throws -> String {
        guard name.hasPrefix("redis-primary-"), let n = Int(name.dropFirst("redis-primary-".count)) else { return name }
        if let named = primaryNames.withLock({ $0[name] }) { return named }
        func number(_ status: RedisNodeStatus) -> Int { Int(status.name.dropFirst("redis-".count)) ?? 0 }
        let up: [RedisNodeStatus] = supervisor.redisStatus.map(\.status).filter { $0.up && $0.role == "master" }
        let primaries: [String] = up.sorted { number($0) < number($1) }.map(\.name)
        guard n >= 1, n <= primaries.count else {
            throw BenchFailure("\(name): there are \(primaries.count) primaries up (\(primaries.joined(separator: ", ")))")
        }
        primaryNames.withLock { $0[name] = primaries[n - 1] }
        return primaries[n - 1]
    }
}
