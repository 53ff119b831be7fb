import ArgumentParser
import ClusterSupervisor
import FailoverBench
import Foundation
import Logging
import MiniHTTP
import Synchronization

extension SessionClusterCommand {
    /// `session-cluster bench`: what users lose when an instance dies, per strategy.
    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Failover benchmark: simulated users against a cluster while nodes are killed, stopped and restarted.",
            discussion: """
                Without --target, each strategy's cluster (nodes behind the balancer, like `demo`) is started, \
                measured and stopped, one after another, with the faults applied by the supervisor. With \
                --target, a running cluster is measured; faults are then carried out by --fault-command, if given. \
                Every user has its own cookie jar and keep-alive connection, sends POST /api/counter with an \
                Idempotency-Key (a failed write is retried once with the same key; with --no-idempotency-key \
                neither) and every 4th request GET /api/session, and every answer is classified: error, lost \
                session, lost update, duplicate, stale read. Without --fault, node-2 is killed at a third of the \
                run and restarted at two thirds. With --fault rolling@10s:6s every node is restarted in turn \
                (SIGTERM, wait for the exit, start again): node-1 at 10 s, node-2 at 16 s, and so on.
                """)

        @Option(help: "Strategies to measure, in order: replicate-async, replicate-sync, redis, redis-cluster, local.")
        var strategies = "replicate-async,replicate-sync,redis,local"

        @Option(help: "redis, redis-cluster: replicas that must acknowledge each session write (Redis WAIT); 0: asynchronous.")
        var redisWaitReplicas = 0

        @Option(help: "redis-cluster: replicas per primary of the private cluster (3 primaries).")
        var redisClusterReplicas = 1

        @Option(help: "Nodes per cluster.")
        var nodes = 3

        @Option(help: "Simulated users.")
        var users = 200

        @Option(help: "Length of each strategy's run: 30s, 1.5m, 500ms.")
        var duration = "30s"

        @Option(
            name: .customLong("fault"),
            help: "kill:NODE@T, restart:NODE@T, stop:NODE@T1-T2 (SIGSTOP, then SIGCONT), or rolling@T:GAP (every node restarted in turn, the first at T, each next one GAP later; rolling:NODE,NODE@T:GAP for some nodes, in that order, and with --target); repeatable. NODE: node-N, or a redis-server: redis (--strategy redis), redis-N, or redis-primary-N (the Nth primary at that moment; redis-cluster).")
        var faults: [String] = []

        @Flag(help: "Send writes without an Idempotency-Key: a failed write is then not retried, and the checker allows for it having been applied or not.")
        var noIdempotencyKey = false

        @Flag(help: "No faults at all (a baseline run).")
        var noFaults = false

        @Option(help: "Fixed arrival rate in requests/s over all users (latency then counts from the intended send time). Default: closed loop.")
        var rate: Double?

        @Option(help: "Closed loop: pause of each user between two requests, in milliseconds.")
        var thinkMs = 20

        @Option(help: "Measure this running cluster instead (http://127.0.0.1:PORT[/prefix]).")
        var target: String?

        @Option(help: "With --target: shell command that carries out a fault; $FAULT_ACTION (kill, stop, resume, restart) and $FAULT_NODE are set.")
        var faultCommand: String?

        @Option(help: "With --target: the write request.")
        var write = "POST /api/counter"

        @Option(help: "With --target: the read request.")
        var read = "GET /api/session"

        @Option(help: "With --target: the JSON field with the counter (dots for nesting).")
        var countField = "count"

        @Option(help: "With --target: the JSON field naming the node, when there is no X-Served-By header.")
        var nodeField = "node"

        @Option(help: "Longest wait for one answer, in milliseconds.")
        var timeoutMs = 2_000

        @Option(help: "Client threads.")
        var threads = 1

        @Option(help: "Directory for report.json and report.html.")
        var report = "failover-report"

        @Option(help: "The nodes' log level.")
        var nodeLogLevel = "warning"

        @Option(help: "Keep the nodes' logs in this directory, one folder per strategy (default: removed after the run).")
        var nodeLogs: String?

        @Option(
            name: .customLong("node-arg"), parsing: .unconditionalSingleValue,
            help: "An extra argument for every node of the clusters the benchmark starts; repeatable (--node-arg --key-lookups --node-arg when-peer-in-doubt).")
        var nodeArguments: [String] = []

        func run() throws {
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            var logger = Logger(label: "bench")
            logger.logLevel = .notice

            guard let durationMillis = parseBenchTimeMillis(duration), durationMillis >= 1_000 else {
                throw ValidationError("--duration: expected a time such as 30s, 1.5m or 500ms, at least 1s")
            }
            let plan = try faultPlan(durationMillis: durationMillis)
            let pacing: Pacing = rate.map { .fixedRate(requestsPerSecond: $0) } ?? .closedLoop(thinkTimeMillis: thinkMs)
            let command = "session-cluster bench " + CommandLine.arguments.dropFirst(2).joined(separator: " ")
            var results: [StrategyResult] = []

            if let target {
                let injector = faultCommand.map { ShellFaultInjector(command: $0) }
                if injector == nil && !plan.isEmpty {
                    print("note: --target without --fault-command: the faults are marked on the timeline but not carried out")
                }
                let benchTarget: BenchTarget
                do {
                    benchTarget = try BenchTarget(
                        baseURL: target, write: try BenchTarget.Endpoint(write), read: try BenchTarget.Endpoint(read),
                        countField: countField, nodeField: nodeField)
                } catch {
                    throw ValidationError("--target: \(error)")
                }
                results.append(
                    try measure(name: "target", target: benchTarget, plan: plan, pacing: pacing, durationMillis: durationMillis,
                                injector: injector, logger: logger))
            } else {
                for name in try strategyList() {
                    results.append(try measureCluster(name, plan: plan, pacing: pacing, durationMillis: durationMillis, logger: logger))
                }
            }

            let benchReport = BenchReport(command: command, strategies: results)
            print("")
            print(benchReport.table())
            let directory = URL(fileURLWithPath: report)
            let files = try benchReport.write(to: directory)
            print("report: \(files.html.path)  (and \(files.json.lastPathComponent))")
        }

        /// The faults: as given, none with --no-faults, else kill node-2 at a third and restart it at two thirds.
        private func faultPlan(durationMillis: Int) throws -> FaultPlan {
            if noFaults {
                guard faults.isEmpty else { throw ValidationError("--no-faults and --fault exclude each other") }
                return FaultPlan()
            }
            let specs =
                faults.isEmpty
                ? ["kill:node-2@\(durationMillis / 3)ms", "restart:node-2@\(2 * durationMillis / 3)ms"] : faults
            do {
                let plan = try FaultPlan(parsing: specs)
                // A rolling restart of the whole cluster restarts --nodes nodes (named by the supervisor at its start).
                try plan.validate(durationMillis: durationMillis, clusterSize: target == nil ? nodes : nil)
                if target != nil, let rolling = plan.unresolvedRolling.first {
                    throw ValidationError(
                        "fault '\(rolling)': with --target, name the nodes to restart, in order: rolling:NODE,NODE,...@T:GAP")
                }
                return plan
            } catch {
                throw ValidationError("\(error)")
            }
        }

        private func strategyList() throws -> [String] {
            let names = strategies.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !names.isEmpty else { throw ValidationError("--strategies is empty") }
            for name in names where Self.clusterStrategy(name) == nil {
                throw ValidationError("unknown strategy '\(name)'; available: replicate-async, replicate-sync, redis, redis-cluster, local")
            }
            return names
        }

        static func clusterStrategy(_ name: String) -> (ClusterConfiguration.Strategy, String)? {
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
        private func measureCluster(
            _ name: String, plan: FaultPlan, pacing: Pacing, durationMillis: Int, logger: Logger
        ) throws -> StrategyResult {
            let (strategy, mode) = Self.clusterStrategy(name)!
            let usesRedis = strategy == .redis || strategy == .redisCluster
            var configuration = ClusterConfiguration(
                strategy: strategy, replicationMode: mode, nodeCount: nodes, port: 0,
                executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path,
                nodeLogLevel: nodeLogLevel,
                extraNodeArguments: nodeArguments
                    + (usesRedis && redisWaitReplicas > 0 ? ["--redis-wait-replicas", "\(redisWaitReplicas)"] : []))
            configuration.redisClusterReplicas = redisClusterReplicas
            configuration.balancer.eventLoops = 1
            if let nodeLogs {
                guard mkdir(nodeLogs, 0o755) == 0 || errno == EEXIST else {
                    throw ValidationError("--node-logs: cannot create \(nodeLogs): \(String(cString: strerror(errno)))")
                }
                configuration.logDirectory = "\(nodeLogs)/\(name)"
            }
            let linkFaults = plan.faults.contains { [.partition, .isolate, .slowLink].contains($0.kind) }
            if linkFaults && (strategy == .local || strategy == .redisCluster) {
                throw ValidationError(
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
                throw ValidationError("\(name): \(error)")
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
                        throw ValidationError("fault '\(fault)': stop windows are for nodes; a redis-server can be killed and restarted")
                    }
                    if supervisor.nodeNames.contains(node) || redisNames.contains(node) { continue }
                    if strategy == .redisCluster, node.hasPrefix("redis-primary-"), let n = Int(node.dropFirst(14)),
                        (1...configuration.redisClusterPrimaries).contains(n)
                    { continue }
                    throw ValidationError(
                        "fault on '\(node)': the cluster has \((supervisor.nodeNames + redisNames).joined(separator: ", "))"
                            + (strategy == .redisCluster ? ", redis-primary-1..\(configuration.redisClusterPrimaries)" : ""))
                }
            }
            let target = try BenchTarget(baseURL: "http://127.0.0.1:\(supervisor.port)")
            // Every node should hold every session once the load stops: read each from each (`local` keeps its own).
            let nodesToCompare = strategy == .local ? [] : supervisor.nodePorts.map { BenchNode(name: $0.name, port: $0.port) }
            return try measure(
                name: name, target: target, plan: resolved, pacing: pacing, durationMillis: durationMillis,
                injector: SupervisorFaultInjector(supervisor: supervisor),
                slowStartMillis: configuration.balancer.healthCheck?.slowStartMillis ?? 0,
                convergenceNodes: nodesToCompare, logger: logger)
        }

        private func measure(
            name: String, target: BenchTarget, plan: FaultPlan, pacing: Pacing, durationMillis: Int,
            injector: (any FaultInjector)?, slowStartMillis: Int = 0, convergenceNodes: [BenchNode] = [], logger: Logger
        ) throws -> StrategyResult {
            var configuration = BenchConfiguration(
                target: target, users: users, durationSeconds: Double(durationMillis) / 1000, pacing: pacing,
                requestTimeoutMillis: timeoutMs, threads: threads, faults: plan, idempotencyKeys: !noIdempotencyKey,
                slowStartMillis: slowStartMillis)
            configuration.convergenceNodes = convergenceNodes
            let runner: BenchRunner
            do {
                runner = try BenchRunner(configuration: configuration, injector: injector, logger: logger) { progress in
                    FileHandle.standardError.write(Data("\r\u{1B}[K  \(progress.line)".utf8))
                }
            } catch {
                throw ValidationError("\(error)")
            }
            let result = runner.run(name: name)
            FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
            return result
        }

        /// `node2` is accepted for `node-2`.
        static func nodeName(_ name: String) -> String {
            guard name.hasPrefix("node"), !name.hasPrefix("node-"), Int(name.dropFirst(4)) != nil else { return name }
            return "node-" + name.dropFirst(4)
        }
    }
}

/// Faults carried out by the cluster supervisor on its own nodes and redis-servers.
final class SupervisorFaultInjector: FaultInjector {
    let supervisor: ClusterSupervisor
    /// Which server each `redis-primary-N` named when first used (so `restart:redis-primary-1` restarts the one killed).
    private let primaryNames = Mutex<[String: String]>([:])

    init(supervisor: ClusterSupervisor) {
        self.supervisor = supervisor
    }

    func apply(_ action: FaultAction, node: String) throws {
        let name = SessionClusterCommand.Bench.nodeName(node)
        switch (action, name.hasPrefix("redis")) {
        case (.partition, _):
            // The plan's names are the supervisor's already (`FaultPlan.mappingNodes`).
            guard let groups = Fault.partitionGroups(node) else { throw ValidationError("malformed partition '\(node)'") }
            try supervisor.partition(groups)
        case (.heal, _): supervisor.healPartition()
        case (.slow, _), (.unslow, _):
            guard let link = Fault.slowLink(node) else { throw ValidationError("malformed slow link '\(node)'") }
            let slow = action == .slow
            try supervisor.slowLink(
                link.a, link.b, latencyMillis: slow ? link.latencyMillis : 0, lossPercent: slow ? link.lossPercent : 0)
        case (.kill, true): try supervisor.killRedis(try redisServer(name))
        case (.restart, true): try supervisor.restartRedis(try redisServer(name))
        case (.stop, true), (.resume, true):
            throw ValidationError("stop windows are for nodes; a redis-server can be killed and restarted")
        case (.kill, false): try supervisor.kill(name)
        case (.stop, false): try supervisor.stop(name)
        case (.resume, false): try supervisor.resume(name)
        case (.restart, false): try supervisor.restart(name)
        }
    }
}

/// Faults carried out by a shell command (for clusters the benchmark did not start).
struct ShellFaultInjector: FaultInjector {
    let command: String

    func apply(_ action: FaultAction, node: String) throws {
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
            throw ValidationError("fault command exited with status \(process.terminationStatus) for \(action.rawValue) \(node)")
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
            throw ValidationError("\(name): there are \(primaries.count) primaries up (\(primaries.joined(separator: ", ")))")
        }
        primaryNames.withLock { $0[name] = primaries[n - 1] }
        return primaries[n - 1]
    }
}
