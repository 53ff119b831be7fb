/// A lock service: what each backend (Redis, PostgreSQL, ZooKeeper) implements.
///
/// Small on purpose, like swift-log's `LogHandler`: a backend takes, gives
/// back and extends a named lock for one *holder* (a random token naming one
/// acquisition). Reentrancy, owners, keep-alive and errors a caller sees are
/// `DistributedLock`'s, written once above every backend.
///
/// Contract:
/// - **Mutual exclusion**: while a grant's lease runs, no other holder gets
///   the same name.
/// - **Fencing**: every grant of a name carries a fencing token strictly
///   greater than every earlier grant's of that name.
/// - `acquire` blocks up to `waitMillis` and returns nil if the lock stayed
///   taken; it throws `LockError(.unavailable)` when the service cannot be
///   reached (never by waiting the whole timeout for it).
/// - `release` and `extend` act only for the holder that owns the lock now:
///   a holder whose lease ran out can never release or extend the next
///   holder's lock (false then).
/// - Calls may block; they are made from ordinary threads, never from an
///   event loop.
public protocol LockService: Sendable {
    /// A short name for logs, metrics and benchmarks: "redis", "postgres-table", ….
    var kind: String { get }

    /// Takes `name` for `holder`, waiting up to `waitMillis`; the lease lasts
    /// `leaseMillis` unless extended. nil when someone else held the lock for
    /// the whole wait.
    func acquire(_ name: String, holder: String, leaseMillis: Int, waitMillis: Int) throws -> LockGrant?

    /// Gives the lock back if `holder` owns it. False when it does not (its
    /// lease ran out; someone else may hold the lock now).
    func release(_ name: String, holder: String) throws -> Bool

    /// Sets the lease of `holder`'s lock to `leaseMillis` from now. False
    /// when `holder` does not own the lock any more.
    func extend(_ name: String, holder: String, leaseMillis: Int) throws -> Bool
}

/// What a service grants with a lock.
public struct LockGrant: Sendable, Equatable {
    /// Strictly greater than the fencing token of every earlier grant of the same name.
    public var fencingToken: Int64
    /// When the lease ends at the latest, on this process's clock: counted
    /// from before the request was sent, so it errs early. nil for a lock
    /// that has no lease (held as long as its connection or session lives).
    public var expiresAt: ContinuousClock.Instant?

    public init(fencingToken: Int64, expiresAt: ContinuousClock.Instant?) {
        self.fencingToken = fencingToken
        self.expiresAt = expiresAt
    }
}
