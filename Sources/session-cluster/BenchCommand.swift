import ArgumentParser
import Benchmarks
import FailoverBench
import Foundation

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
            let logger = try standardErrorLogger(label: "bench", level: "notice")

            guard let durationMillis = parseBenchTimeMillis(duration), durationMillis >= 1_000 else {
                throw ValidationError("--duration: expected a time such as 30s, 1.5m or 500ms, at least 1s")
            }
            let pacing: Pacing = rate.map { .fixedRate(requestsPerSecond: $0) } ?? .closedLoop(thinkTimeMillis: thinkMs)
            let command = "session-cluster bench " + CommandLine.arguments.dropFirst(2).joined(separator: " ")
            var bench = ClusterBench(durationMillis: durationMillis, pacing: pacing)
            bench.users = users
            bench.nodes = nodes
            bench.threads = threads
            bench.timeoutMillis = timeoutMs
            bench.idempotencyKeys = !noIdempotencyKey
            bench.redisWaitReplicas = redisWaitReplicas
            bench.redisClusterReplicas = redisClusterReplicas
            bench.nodeLogLevel = nodeLogLevel
            bench.nodeLogs = nodeLogs
            bench.nodeArguments = nodeArguments
            let plan: FaultPlan
            do { plan = try bench.faultPlan(faults, noFaults: noFaults, againstTarget: target != nil) } catch {
                throw ValidationError(error.description)
            }
            var results: [StrategyResult] = []

            if let target {
                results.append(
                    try bench.measureTarget(
                        baseURL: target, write: write, read: read, countField: countField, nodeField: nodeField,
                        faultCommand: faultCommand, plan: plan, logger: logger))
            } else {
                let names: [String]
                do { names = try ClusterBench.strategyNames(strategies) } catch { throw ValidationError(error.description) }
                for name in names { results.append(try bench.measureCluster(name, plan: plan, logger: logger)) }
            }

            let benchReport = BenchReport(command: command, strategies: results)
            print("")
            print(benchReport.table())
            let directory = URL(fileURLWithPath: report)
            let files = try benchReport.write(to: directory)
            print("report: \(files.html.path)  (and \(files.json.lastPathComponent))")
        }
    }
}
