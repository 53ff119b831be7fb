import ArgumentParser
import Benchmarks
import ClusterDemo
import ClusterLocks
import Foundation
import Logging

extension SessionClusterCommand {
    /// What each lock service costs and what it guarantees (`LockBench`).
    struct BenchLocks: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-locks",
            abstract: "Measure the distributed locks of each backend: speed, hand-over, a killed holder, a paused holder and fencing.",
            discussion: """
                For each of --backends: acquire+release per second on a free lock; the hand-over \
                latency among 8 contenders (release call to the next acquire's return); how long \
                until a SIGKILLed holder's lock is taken over; and --paused-rounds times a holder \
                SIGSTOPped past its lease while another takes the lock and writes — how many of the \
                paused holders' late writes an unfenced resource took, and a fenced one refused. \
                scripts/bench-locks.sh starts private servers of every backend and runs this.
                """)

        @Option(help: "Comma-separated: \(LockBackend.names).")
        var backends = LockBackend.allCases.map(\.rawValue).joined(separator: ",")

        @Option(help: "Redis for the redis backend: redis://host:port/db.")
        var redis = "redis://127.0.0.1:6379/0"

        @Option(help: "PostgreSQL for the postgres backends: postgresql://user@host:port/database.")
        var postgres = "postgresql://postgres@127.0.0.1:5432/postgres"

        @Option(help: "ZooKeeper for the zookeeper backend: host:port,host:port,...")
        var zookeeper = "127.0.0.1:2181"

        @Option(help: "Seconds of each timed phase.")
        var seconds = 3.0

        @Option(help: "Lease of the killed and paused holders, in milliseconds (ZooKeeper: their session timeout).")
        var leaseMs = 1_000

        @Option(help: "Paused-holder rounds per backend.")
        var pausedRounds = 5

        @Flag(help: "Also fail the services under load: Redis (a private primary, replica and Sentinel: the primary SIGKILLed), PostgreSQL (a crash and restart: needs --postgres-pid) and ZooKeeper (its leader SIGKILLed: needs --zookeeper-pids).")
        var failover = false

        @Option(help: "The ZooKeeper servers' PIDs, comma-separated, in the order of --zookeeper's addresses.")
        var zookeeperPids = ""

        @Option(help: "The PostgreSQL postmaster's PID: with --failover, a backend of it is SIGKILLed, which restarts the server.")
        var postgresPid: Int32?

        @Option(help: "Seconds of each failover phase (the fault comes after 2).")
        var failoverSeconds = 8.0

        @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "warning"

        func validate() throws {
            guard seconds > 0, leaseMs > 0, pausedRounds > 0, failoverSeconds > 3 else {
                throw ValidationError("--seconds, --lease-ms and --paused-rounds must be positive, --failover-seconds above 3")
            }
            _ = try parsedBackends()
        }

        private func parsedBackends() throws -> [LockBackend] {
            var chosen: [LockBackend] = []
            for name in backends.split(separator: ",") {
                do { chosen.append(try LockBackend.named(String(name))) } catch { throw ValidationError(error.message) }
            }
            return chosen
        }

        func run() throws {
            let logger = try standardErrorLogger(label: "bench-locks", level: logLevel)
            let chosen = try parsedBackends()
            let endpoints: LockBackend.Endpoints
            do {
                endpoints = try .parse(
                    redis: chosen.contains(.redis) ? redis : nil, postgres: postgres, zookeeper: zookeeper, logger: logger)
            } catch {
                throw ValidationError(error.message)
            }
            var bench = LockBench(
                endpoints: endpoints, workerArguments: ["--redis", redis, "--postgres", postgres, "--zookeeper", zookeeper],
                executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path)
            bench.backends = chosen
            bench.seconds = seconds
            bench.leaseMillis = leaseMs
            bench.pausedRounds = pausedRounds
            bench.failover = failover
            bench.failoverSeconds = failoverSeconds
            bench.zookeeperPIDs = zookeeperPids.split(separator: ",").compactMap { pid_t(String($0)) }
            bench.postgresPID = postgresPid
            do {
                let results = try bench.run(logger: logger)
                print(LockBench.Result.table(results), terminator: "")
                if failover {
                    print()
                    print(LockBench.FailoverResult.table(try bench.failover(logger: logger)), terminator: "")
                }
            } catch let error as LockError {
                throw ValidationError("\(error)")
            }
        }
    }
}
