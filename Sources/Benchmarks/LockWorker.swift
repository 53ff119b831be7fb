import ClusterDemo
import ClusterLocks
import Logging
import MiniHTTP
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// One process of lock contenders (`session-cluster lock-worker`), for the
/// lock tests and benchmark: threads that take a lock in turn, and say what
/// they did on standard output, a line each:
///
/// - `acquired <fencing token> <monotonic ns>`
/// - `wrote <fencing token> fenced=<status> unfenced=<status>` (with a resource)
/// - `released <fencing token> <monotonic ns> ok|lost`
///
/// With `goDescriptor`, a holder waits for a byte on it before writing
/// (a test stops the process in between); with `keep`, it never releases.
public struct LockWorker: Sendable {
    public var service: any LockService
    public var name: String
    public var threads = 1
    public var rounds = 1
    public var leaseMillis = 30_000
    public var waitMillis = 30_000
    /// How long a holder keeps the lock before its write and release.
    public var holdMillis = 0
    /// A descriptor to read one byte from before each write.
    public var goDescriptor: Int32?
    /// The port of a `FencedResourceServer` on 127.0.0.1, written to once per hold.
    public var resourcePort: Int?
    /// Never release: hold until the process ends.
    public var keep = false

    public init(service: any LockService, name: String) {
        self.service = service
        self.name = name
    }

    /// Runs every thread's rounds; throws the first error.
    public func run(logger: Logger) throws {
        let locks = DistributedLock(service: service, logger: logger)
        let output = Mutex(())
        let say: @Sendable (String) -> Void = { line in
            output.withLock { _ in
                print(line)
                fflush(nil)  // every line at once: a test reads them while the process runs
            }
        }
        let failure = Mutex<(any Error)?>(nil)
        startThreads(threads) { _ in
            do {
                for _ in 0..<rounds { try hold(locks, say: say) }
            } catch {
                failure.withLock { $0 = $0 ?? error }
            }
        }.wait()
        if let error = failure.withLock({ $0 }) { throw error }
        if keep { while true { sleepMillis(60_000) } }
    }

    private func hold(_ locks: DistributedLock, say: (String) -> Void) throws {
        let lease = try locks.acquire(name, by: LockOwner(), leaseMillis: leaseMillis, waitMillis: waitMillis)
        say("acquired \(lease.fencingToken) \(monotonicNanos())")
        if holdMillis > 0 { sleepMillis(Int64(holdMillis)) }
        if let goDescriptor {
            var byte: UInt8 = 0
            _ = read(goDescriptor, &byte, 1)
        }
        if let resourcePort {
            let fenced = try write(lease.fencingToken, to: "/fenced", port: resourcePort)
            let unfenced = try write(lease.fencingToken, to: "/unfenced", port: resourcePort)
            say("wrote \(lease.fencingToken) fenced=\(fenced) unfenced=\(unfenced)")
        }
        if keep { return }
        let end = monotonicNanos()
        do {
            try locks.release(lease)
            say("released \(lease.fencingToken) \(end) ok")
        } catch let error as LockError where error.code == .lost {
            say("released \(lease.fencingToken) \(end) lost")
        }
    }

    private func write(_ token: Int64, to path: String, port: Int) throws -> Int {
        let connection = HTTPClientConnection(host: "127.0.0.1", port: port, timeoutMillis: 5_000)
        defer { connection.disconnect() }
        do {
            return try connection.request("POST", "\(path)?token=\(token)").status
        } catch {
            throw LockError(.unavailable, "the fenced resource: \(error)")
        }
    }
}
