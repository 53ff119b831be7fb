import Synchronization

/// Why a lock call failed.
public struct LockError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// Someone else held the lock for the whole wait.
        case timedOut
        /// The lease ran out (or the service's session with this process
        /// ended) before the holder released or extended it: another holder
        /// may have had the lock meanwhile.
        case lost
        /// The lock service could not be reached, or failed.
        case unavailable
        /// A bad name or argument (an empty name, a lease of 0).
        case invalidArgument
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "lock \(code.rawValue): \(message)" }
}

extension LockError {
    /// Runs `body`, for a backend: a `Failure` it throws (the backend client's own error) becomes
    /// `.unavailable`, "`service`: `error`"; other errors pass through.
    public static func unavailableOnFailure<T, Failure: Error>(
        of _: Failure.Type, service: String, _ body: () throws -> T
    ) throws -> T {
        do {
            return try body()
        } catch let error as Failure {
            throw LockError(.unavailable, "\(service): \(error)")
        }
    }
}

/// Who holds a lock: a reentrant acquisition is one by the same owner.
///
/// An owner is a value the caller makes and passes along (a job, a request,
/// a worker), like the thread that owns a reentrant mutex. Two owners are
/// never the same, even in one process; one owner must not race itself for
/// the same name from two threads (the second waits for the first's lock).
public struct LockOwner: Hashable, Sendable, CustomStringConvertible {
    /// Unique per owner in this process (owners are compared only here, by `DistributedLock`'s
    /// reentrancy count; the service sees a random holder token per acquisition): a counter, so
    /// an owner made per request costs no random bytes.
    public let id: UInt64

    private static let lastID = Atomic<UInt64>(0)

    public init() { id = Self.lastID.add(1, ordering: .relaxed).newValue }

    public var description: String { "owner #\(id)" }
}
