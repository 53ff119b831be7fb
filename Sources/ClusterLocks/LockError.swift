import SystemSupport

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

/// Who holds a lock: a reentrant acquisition is one by the same owner.
///
/// An owner is a value the caller makes and passes along (a job, a request,
/// a worker), like the thread that owns a reentrant mutex. Two owners are
/// never the same, even in one process; one owner must not race itself for
/// the same name from two threads (the second waits for the first's lock).
public struct LockOwner: Hashable, Sendable, CustomStringConvertible {
    /// Unique per owner: 12 random bytes, base64url.
    public let id: String

    public init() { id = secureRandomToken(byteCount: 12) }

    public var description: String { "owner \(id.prefix(6))…" }
}
