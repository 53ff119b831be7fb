import Logging
import Synchronization
import SystemSupport

/// A held lock: what `release` and `extend` take back.
public struct LockLease: Sendable, Equatable, CustomStringConvertible {
    /// The lock's name.
    public let name: String
    /// Who took it.
    public let owner: LockOwner
    /// The random token naming this acquisition at the lock service (never logged whole).
    public let holder: String
    /// Strictly greater than the fencing token of every earlier acquisition
    /// of this name. Hand it to the resource the lock protects, which
    /// refuses writes carrying a smaller token than one it has seen
    /// (`FencedResource`): the only defence against a holder that stalled
    /// past its lease and still believes it holds the lock.
    public let fencingToken: Int64
    /// When the lease ends at the latest, on this process's clock (it errs
    /// early); nil for a lock without a lease (a PostgreSQL advisory lock).
    public internal(set) var expiresAt: ContinuousClock.Instant?

    /// Whether the lease has run out: the lock may belong to someone else now.
    public var isExpired: Bool { expiresAt.map { ContinuousClock.now >= $0 } ?? false }

    public var description: String {
        "lease(\(DistributedLock.loggable(name)), fence \(fencingToken), \(owner))"
    }
}

/// A distributed lock on any `LockService`: reentrant per `LockOwner`,
/// blocking with a timeout, with fencing tokens and clear errors.
///
/// ```swift
/// let locks = DistributedLock(service: RedisLock(client: redis, logger: logger), logger: logger)
/// try locks.withLock("capture:\(orderID)", leaseMillis: 10_000, waitMillis: 2_000) { lease in
///     try payments.capture(orderID, fencingToken: lease.fencingToken)
/// }
/// ```
///
/// Reentrancy is counted here, in the holder's process (as Curator's
/// `InterProcessMutex` and Redisson do): the service sees one holder, and
/// an owner that takes a lock it holds gets the same lease back with its
/// count raised; the lock goes back to the service when the count reaches
/// zero.
///
/// Errors are `LockError`: `.timedOut` when the wait ran out, `.lost` when a
/// lease ran out before its release or extension (or a reentrant acquire of
/// it), `.unavailable` when the service failed, `.invalidArgument`.
public final class DistributedLock: Sendable {
    /// The backend.
    public let service: any LockService
    let logger: Logger

    private struct Key: Hashable {
        var name: String
        var owner: LockOwner
    }

    private struct Held {
        var lease: LockLease
        var count: Int
    }

    private let held = Mutex<[Key: Held]>([:])

    public init(service: any LockService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    /// Takes `name` for `owner`, waiting up to `waitMillis`; the lease lasts
    /// `leaseMillis` unless extended. When `owner` holds it already, returns
    /// its lease with the hold count raised (no call to the service).
    public func acquire(_ name: String, by owner: LockOwner, leaseMillis: Int, waitMillis: Int) throws -> LockLease {
        guard !name.isEmpty else { throw LockError(.invalidArgument, "a lock name must not be empty") }
        guard leaseMillis > 0 else { throw LockError(.invalidArgument, "leaseMillis must be positive, got \(leaseMillis)") }
        guard waitMillis >= 0 else { throw LockError(.invalidArgument, "waitMillis must not be negative, got \(waitMillis)") }
        let key = Key(name: name, owner: owner)
        let reentered = try held.withLock { table -> LockLease? in
            guard var entry = table[key] else { return nil }
            if entry.lease.isExpired {
                throw LockError(.lost, "'\(Self.loggable(name))' is held by \(owner), but its lease ran out")
            }
            entry.count += 1
            table[key] = entry
            return entry.lease
        }
        if let reentered { return reentered }
        let holder = secureRandomToken(byteCount: 18)
        guard let grant = try service.acquire(name, holder: holder, leaseMillis: leaseMillis, waitMillis: waitMillis)
        else {
            logger.debug("lock wait timed out", metadata: ["lock": "\(Self.loggable(name))", "wait_ms": "\(waitMillis)"])
            throw LockError(.timedOut, "'\(Self.loggable(name))' not acquired within \(waitMillis) ms")
        }
        let lease = LockLease(
            name: name, owner: owner, holder: holder, fencingToken: grant.fencingToken, expiresAt: grant.expiresAt)
        held.withLock { $0[key] = Held(lease: lease, count: 1) }
        logger.trace("lock acquired", metadata: ["lock": "\(Self.loggable(name))", "fence": "\(grant.fencingToken)"])
        return lease
    }

    /// How many times `lease`'s owner holds its lock (0: not at all).
    public func holdCount(_ lease: LockLease) -> Int {
        held.withLock { $0[Key(name: lease.name, owner: lease.owner)]?.count ?? 0 }
    }

    /// Lowers the hold count; at zero gives the lock back to the service.
    /// Throws `.lost` when the lease had run out (someone else may have held
    /// the lock meanwhile: what it protected may have been overlapped), and
    /// `.invalidArgument` for a lease not held.
    public func release(_ lease: LockLease) throws {
        let key = Key(name: lease.name, owner: lease.owner)
        let last = try held.withLock { table -> Bool in
            guard var entry = table[key], entry.lease.holder == lease.holder else {
                throw LockError(.invalidArgument, "\(lease) is not held")
            }
            entry.count -= 1
            if entry.count > 0 {
                table[key] = entry
                return false
            }
            table[key] = nil
            return true
        }
        guard last else { return }
        if try !service.release(lease.name, holder: lease.holder) {
            throw LockError(.lost, "'\(Self.loggable(lease.name))' ran out of its lease before its release")
        }
    }

    /// Sets the lease to `leaseMillis` from now; returns the lease with its
    /// new expiry. Throws `.lost` when it had run out already.
    public func extend(_ lease: LockLease, leaseMillis: Int) throws -> LockLease {
        guard leaseMillis > 0 else { throw LockError(.invalidArgument, "leaseMillis must be positive, got \(leaseMillis)") }
        let sent = ContinuousClock.now
        guard try service.extend(lease.name, holder: lease.holder, leaseMillis: leaseMillis) else {
            throw LockError(.lost, "'\(Self.loggable(lease.name))' ran out of its lease before this extension")
        }
        var extended = lease
        if lease.expiresAt != nil { extended.expiresAt = sent + .milliseconds(leaseMillis) }
        held.withLock { table in
            let key = Key(name: lease.name, owner: lease.owner)
            if table[key]?.lease.holder == lease.holder { table[key]?.lease.expiresAt = extended.expiresAt }
        }
        return extended
    }

    /// Runs `body` holding `name`, then releases it (also when `body` throws).
    ///
    /// With `keepAliveMillis` > 0 the lease is extended every third of
    /// `leaseMillis` while `body` runs, for at most `keepAliveMillis`, so a
    /// slow `body` keeps the lock and a hung one does not keep it forever.
    /// A lease found lost at release is logged, not thrown: `body` has run.
    public func withLock<T>(
        _ name: String, by owner: LockOwner = LockOwner(), leaseMillis: Int, waitMillis: Int,
        keepAliveMillis: Int = 0, _ body: (LockLease) throws -> T
    ) throws -> T {
        let lease = try acquire(name, by: owner, leaseMillis: leaseMillis, waitMillis: waitMillis)
        let giveBack = hold(lease, leaseMillis: leaseMillis, keepAliveMillis: keepAliveMillis)
        defer { giveBack() }
        return try body(lease)
    }

    /// Keeps an acquired lease alive (as `withLock` does) until the returned
    /// function is called, which stops renewing it and releases it; a lost
    /// lease or a failed release is logged.
    public func hold(_ lease: LockLease, leaseMillis: Int, keepAliveMillis: Int) -> @Sendable () -> Void {
        let keeper =
            keepAliveMillis > 0 && lease.expiresAt != nil
            ? LeaseKeeper(lock: self, lease: lease, leaseMillis: leaseMillis, forMillis: keepAliveMillis) : nil
        return { [self] in
            keeper?.stop()
            do {
                try release(lease)
            } catch let error as LockError where error.code == .lost {
                logger.error(
                    "lock expired before its holder released it: another holder may have overlapped",
                    metadata: ["lock": "\(Self.loggable(lease.name))", "fence": "\(lease.fencingToken)"])
            } catch {
                logger.warning(
                    "could not release a lock; it ends with its lease",
                    metadata: ["lock": "\(Self.loggable(lease.name))", "error": "\(error)"])
            }
        }
    }

    /// Lock names longer than 16 characters (session IDs) are shortened in logs and errors.
    public static func loggable(_ name: String) -> String {
        name.count > 16 ? String(name.prefix(6)) + "…" : name
    }
}
