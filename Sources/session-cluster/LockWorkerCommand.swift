import ArgumentParser
import Benchmarks
import ClusterDemo
import ClusterLocks
import Logging

extension SessionClusterCommand {
    /// Lock contenders in one process, for the lock tests and `bench-locks`.
    struct LockWorkerCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lock-worker",
            abstract: "Take a distributed lock in turn from several threads and report each hold (for tests and benchmarks).",
            discussion: """
                Prints a line per event: 'acquired <fencing token> <monotonic ns>', 'wrote <token> \
                fenced=<status> unfenced=<status>' (with --resource-port), 'released <token> \
                <monotonic ns> ok|lost'. Exits 0 when every round ran, 1 on an error (a timed-out \
                wait, an unreachable service).
                """)

        @OptionGroup var lockService: LockServiceOptions

        @Option(help: "The lock's name.")
        var name = "job"

        @Option(help: "Threads, each its own lock owner.")
        var threads = 1

        @Option(help: "Holds per thread.")
        var rounds = 1

        @Option(help: "Lease, in milliseconds.")
        var leaseMs = 30_000

        @Option(help: "Longest wait for the lock, in milliseconds.")
        var waitMs = 30_000

        @Option(help: "How long each hold lasts before its write and release, in milliseconds.")
        var holdMs = 0

        @Option(help: "Before each write, wait for a byte on this file descriptor (inherited from the parent).")
        var goFd: Int32?

        @Option(help: "Port of a fenced resource on 127.0.0.1 (POST /fenced and /unfenced ?token=N) to write once per hold.")
        var resourcePort: Int?

        @Flag(help: "Never release: hold the lock until the process is killed.")
        var keep = false

        @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "warning"

        func validate() throws {
            guard threads > 0, rounds > 0, leaseMs > 0, waitMs >= 0, holdMs >= 0 else {
                throw ValidationError("--threads, --rounds and --lease-ms must be positive; --wait-ms and --hold-ms not negative")
            }
        }

        func run() throws {
            let logger = try standardErrorLogger(label: "lock-worker", level: logLevel)
            var worker = LockWorker(service: try lockService.makeService(logger: logger, leaseMillis: leaseMs), name: name)
            worker.threads = threads
            worker.rounds = rounds
            worker.leaseMillis = leaseMs
            worker.waitMillis = waitMs
            worker.holdMillis = holdMs
            worker.goDescriptor = goFd
            worker.resourcePort = resourcePort
            worker.keep = keep
            do {
                try worker.run(logger: logger)
            } catch let error as LockError {
                throw ValidationError("\(error)")
            }
        }
    }
}

/// Which lock service, and where: `--lock-backend`, `--redis`, `--postgres`, `--zookeeper`, `--namespace`.
struct LockServiceOptions: ParsableArguments {
    @Option(help: "The lock service: \(LockBackend.names).")
    var lockBackend = "redis"

    @Option(help: "Redis for --lock-backend redis: redis://[[user]:password@]host:port/db.")
    var redis = "redis://127.0.0.1:6379/0"

    @Option(help: "PostgreSQL for the postgres backends: postgresql://user[:password]@host:port/database.")
    var postgres = "postgresql://postgres@127.0.0.1:5432/postgres"

    @Option(help: "ZooKeeper for --lock-backend zookeeper: host:port,host:port,...")
    var zookeeper = "127.0.0.1:2181"

    @Option(help: "Keeps these locks apart from others: a Redis key prefix, a PostgreSQL table, a ZooKeeper root node (lower-case letters, digits, _).")
    var namespace = "cluster_locks"

    /// The service; `leaseMillis` is also ZooKeeper's session timeout (its locks' only lease).
    func makeService(logger: Logger, leaseMillis: Int) throws -> any LockService {
        do {
            let backend = try LockBackend.named(lockBackend)
            let endpoints = try LockBackend.Endpoints.parse(
                redis: backend == .redis ? redis : nil, postgres: postgres, zookeeper: zookeeper,
                zookeeperSessionMillis: leaseMillis, logger: logger)
            return try backend.makeService(endpoints, namespace: namespace, logger: logger)
        } catch let error as LockError {
            throw ValidationError(error.message)
        }
    }
}
