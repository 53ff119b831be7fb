import ClusterLocks
import Dispatch
import Logging
import Synchronization
import SystemSupport
import Testing

/// Makes lock services for `LockConformance`: every call a new client of
/// the same lock service (its own connections), as another node would have.
public protocol LockServiceHarness: Sendable {
    /// A new client of the service under test.
    func makeService() throws -> any LockService
    /// A client of a service that cannot be reached (a closed port).
    func makeUnreachableService() throws -> any LockService
}

/// The behaviour every `LockService` must have, through `DistributedLock`.
/// Run it in a parameterized test:
///
/// ```swift
/// @Test(arguments: LockConformance.allCases)
/// func conformance(_ check: LockConformance) throws { try check.run(MyHarness()) }
/// ```
public enum LockConformance: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case eightContendersNeverOverlap
    case fencingTokensStrictlyIncrease
    case anExpiredHolderCannotReleaseOrExtendTheNextHoldersLock
    case theOwnerReentersAndReleasesAtZero
    case aWaiterTakesTheLockOnlyAfterTheRelease
    case aWaitRunsOutAsTimedOut
    case extendKeepsTheLockPastItsLease
    case anUnreachableServiceIsUnavailableNotATimeout

    public var testDescription: String { rawValue }

    /// Whether the check lets a lease run out by not extending it. Not so with ZooKeeper: its
    /// client renews its session while the process runs, so a lease ends only when the holder
    /// stalls (which `LockProcessTests` does with SIGSTOP, on every backend).
    public var needsLeasesThatRunOut: Bool {
        self == .anExpiredHolderCannotReleaseOrExtendTheNextHoldersLock || self == .extendKeepsTheLockPastItsLease
    }

    /// Runs this check against services from `harness`.
    public func run(_ harness: some LockServiceHarness) throws {
        let name = "\(rawValue)-\(secureRandomToken(byteCount: 6))"
        switch self {
        case .eightContendersNeverOverlap:
            // 8 threads, each with its own client, 10 rounds each. Inside the lock: a read, a pause,
            // a write of an unguarded counter, and the fencing token, which must exceed every earlier one.
            let locks = try (0..<8).map { _ in try lock(harness) }
            let counter = Unguarded()
            let problems = Mutex<[String]>([])
            try onThreads(8) { i in
                for _ in 0..<10 {
                    try locks[i].withLock(name, leaseMillis: 30_000, waitMillis: 60_000) { lease in
                        let seen = counter.value
                        if lease.fencingToken <= counter.lastToken {
                            problems.withLock { $0.append("token \(lease.fencingToken) after \(counter.lastToken)") }
                        }
                        counter.lastToken = lease.fencingToken
                        sleepMillis(Int64.random(in: 0...1))
                        counter.value = seen + 1
                    }
                }
            }
            #expect(counter.value == 80, "lost updates: the lock let two holders in at once")
            #expect(problems.withLock { $0 } == [])

        case .fencingTokensStrictlyIncrease:
            // Across clients and names: each name's tokens increase with every grant.
            let a = try lock(harness)
            let b = try lock(harness)
            var last: [String: Int64] = [:]
            for round in 0..<12 {
                let client = round % 2 == 0 ? a : b
                let lockName = name + (round % 3 == 0 ? "-other" : "")
                let lease = try client.acquire(lockName, by: LockOwner(), leaseMillis: 10_000, waitMillis: 5_000)
                #expect(lease.fencingToken > last[lockName, default: 0], "round \(round)")
                last[lockName] = lease.fencingToken
                try client.release(lease)
            }

        case .anExpiredHolderCannotReleaseOrExtendTheNextHoldersLock:
            let first = try lock(harness)
            let second = try lock(harness)
            let old = try first.acquire(name, by: LockOwner(), leaseMillis: 300, waitMillis: 0)
            // The second client waits (up to 30 s, 100 times the lease) and gets it once the lease ends.
            let new = try second.acquire(name, by: LockOwner(), leaseMillis: 30_000, waitMillis: 30_000)
            #expect(old.isExpired, "taken over before the first lease ended")
            #expect(new.fencingToken > old.fencingToken)
            #expect(throws: LockError.self) { _ = try first.extend(old, leaseMillis: 60_000) }
            #expect(lockErrorCode { try first.release(old) } == .lost)
            // The new holder still holds it: a third client cannot take it.
            #expect(lockErrorCode { _ = try lock(harness).acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: 0) } == .timedOut)
            try second.release(new)

        case .theOwnerReentersAndReleasesAtZero:
            let locks = try lock(harness)
            let rival = try lock(harness)
            let owner = LockOwner()
            let outer = try locks.acquire(name, by: owner, leaseMillis: 30_000, waitMillis: 0)
            let inner = try locks.acquire(name, by: owner, leaseMillis: 30_000, waitMillis: 0)
            #expect(inner == outer, "a reentrant acquire returns the same lease")
            #expect(locks.holdCount(outer) == 2)
            // Another owner, even in the same process and client, is not the holder.
            #expect(lockErrorCode { _ = try locks.acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: 0) } == .timedOut)
            try locks.release(inner)
            #expect(locks.holdCount(outer) == 1)
            #expect(lockErrorCode { _ = try rival.acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: 0) } == .timedOut)
            try locks.release(outer)
            #expect(locks.holdCount(outer) == 0)
            #expect(lockErrorCode { try locks.release(outer) } == .invalidArgument, "one release too many")
            let next = try rival.acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: 0)
            try rival.release(next)

        case .aWaiterTakesTheLockOnlyAfterTheRelease:
            // 10 hand-overs: the holder releases after a pause, the waiter (waiting up to 30 s) gets the
            // lock only after that. The hand-over latency is printed, not asserted (machines are noisy).
            let holder = try lock(harness)
            let waiter = try lock(harness)
            var latencies: [Int64] = []
            for _ in 0..<10 {
                let lease = try holder.acquire(name, by: LockOwner(), leaseMillis: 30_000, waitMillis: 5_000)
                let releasedAt = Atomic<Int64>(0)
                startThread {
                    sleepMillis(50)
                    releasedAt.store(Int64(monotonicNanos()), ordering: .sequentiallyConsistent)
                    try? holder.release(lease)
                }
                let next = try waiter.acquire(name, by: LockOwner(), leaseMillis: 30_000, waitMillis: 30_000)
                let gotAt = Int64(monotonicNanos())
                let released = releasedAt.load(ordering: .sequentiallyConsistent)
                #expect(released != 0, "the waiter got the lock before its release")
                #expect(next.fencingToken > lease.fencingToken)
                latencies.append((gotAt - released) / 1000)
                try waiter.release(next)
            }
            latencies.sort()
            print("hand-over latency (\(try harness.makeService().kind)): p50 \(latencies[5]) µs, max \(latencies[9]) µs")

        case .aWaitRunsOutAsTimedOut:
            let holder = try lock(harness)
            let waiter = try lock(harness)
            let lease = try holder.acquire(name, by: LockOwner(), leaseMillis: 30_000, waitMillis: 0)
            for wait in [0, 200] {
                let start = monotonicMillis()
                #expect(lockErrorCode { _ = try waiter.acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: wait) } == .timedOut)
                // Only a lower bound, which load cannot break: the wait never ends before its time.
                #expect(monotonicMillis() - start >= Int64(wait) - 1, "gave up early")
            }
            try holder.release(lease)

        case .extendKeepsTheLockPastItsLease:
            // Lease 2 s, extended to 30 s: 3 s later (1.5 leases) it is still held, and a rival waiting up
            // to 1 s does not get it. (The extension must come within the first lease: 2 s is room for
            // a loaded machine.)
            let locks = try lock(harness)
            let rival = try lock(harness)
            let lease = try locks.acquire(name, by: LockOwner(), leaseMillis: 2_000, waitMillis: 0)
            let extended = try locks.extend(lease, leaseMillis: 30_000)
            sleepMillis(3_000)
            #expect(!extended.isExpired)
            #expect(lockErrorCode { _ = try rival.acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: 1000) } == .timedOut)
            try locks.release(extended)

        case .anUnreachableServiceIsUnavailableNotATimeout:
            let locks = DistributedLock(service: try harness.makeUnreachableService(), logger: quiet)
            let start = monotonicMillis()
            // A 2-minute wait: a lock that retried an unreachable service until then would take far longer
            // than this bound.
            #expect(lockErrorCode { _ = try locks.acquire(name, by: LockOwner(), leaseMillis: 1000, waitMillis: 120_000) } == .unavailable)
            #expect(monotonicMillis() - start < 30_000, "fails at once instead of retrying for the whole wait")
        }
    }

    private func lock(_ harness: some LockServiceHarness) throws -> DistributedLock {
        DistributedLock(service: try harness.makeService(), logger: quiet)
    }
}

/// The code of the `LockError` `body` throws; nil when it throws nothing (or something else).
func lockErrorCode(_ body: () throws -> Void) -> LockError.Code? {
    do {
        try body()
        return nil
    } catch {
        return (error as? LockError)?.code
    }
}

private let quiet = Logger(label: "lock-conformance") { _ in SwiftLogNoOpLogHandler() }

/// State only a working lock keeps consistent.
private final class Unguarded: @unchecked Sendable {
    var value = 0
    var lastToken: Int64 = 0
}

/// Runs `body(i)` on `count` threads and waits for them; the first error is thrown.
private func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
    let failure = Mutex<(any Error)?>(nil)
    startThreads(count) { i in
        do { try body(i) } catch { failure.withLock { $0 = $0 ?? error } }
    }.wait()
    if let error = failure.withLock({ $0 }) { throw error }
}
