#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import SystemSupport

/// How long sessions live. Times are in milliseconds.
public struct SessionExpiry: Sendable, Equatable {
    /// Sliding: a session not accessed for this long expires.
    public var idleTimeoutMillis: Int64
    /// Fixed: a session expires this long after creation, however active. nil for none.
    public var absoluteTimeoutMillis: Int64?

    public init(idleTimeoutMillis: Int64 = 30 * 60_000, absoluteTimeoutMillis: Int64? = 12 * 3_600_000) {
        precondition(idleTimeoutMillis > 0, "idle timeout must be positive")
        self.idleTimeoutMillis = idleTimeoutMillis
        self.absoluteTimeoutMillis = absoluteTimeoutMillis
    }

    /// An access that changes nothing refreshes the idle timer at most this often.
    public var touchIntervalMillis: Int64 { max(1, idleTimeoutMillis / 10) }

    /// Whether a session created at `createdAt` and last accessed at `lastAccess` is expired at `now`.
    public func isExpired(createdAt: Int64, lastAccess: Int64, now: Int64) -> Bool {
        if now - lastAccess >= idleTimeoutMillis { return true }
        if let absolute = absoluteTimeoutMillis, now - createdAt >= absolute { return true }
        return false
    }

    /// Time left to live from `now`: min(idle, absolute remaining). The Redis TTL.
    public func remainingMillis(createdAt: Int64, now: Int64) -> Int64 {
        var ttl = idleTimeoutMillis
        if let absolute = absoluteTimeoutMillis { ttl = min(ttl, createdAt + absolute - now) }
        return max(0, ttl)
    }
}

/// The wall clock of a store, in milliseconds since 1970. Injectable for tests.
public struct SessionClock: Sendable {
    public let nowMillis: @Sendable () -> Int64
    public init(nowMillis: @escaping @Sendable () -> Int64) { self.nowMillis = nowMillis }

    public static let system = SessionClock { wallClockMillis() }
}

/// A clock that only moves when told to.
public final class ManualClock: Sendable {
    private let now: Mutex<Int64>
    public init(startMillis: Int64 = 1_700_000_000_000) { now = Mutex(startMillis) }
    public func advance(millis: Int64) { now.withLock { $0 += millis } }
    public var millis: Int64 { now.withLock { $0 } }
    public var clock: SessionClock { SessionClock { [self] in millis } }
}

/// A stored session as read from a store.
public struct SessionSnapshot: Sendable, Equatable {
    public var id: SessionID
    /// Attribute name → JSON bytes.
    public var attributes: [String: [UInt8]]
    public var createdAtMillis: Int64
    public var lastAccessedAtMillis: Int64
    /// Bumped by every applied delta.
    public var version: UInt64

    /// The attribute that marks an entry of a key/value view over a store
    /// (the adapters' `SessionKeyValueStore`), whose ID is derived from its
    /// key: such an entry is never served as a session, so nobody who can
    /// compute an entry's ID can use it as a session cookie.
    public static let keyValueEntryMarker = "sessioncluster.kv-entry"

    /// Whether this is a key/value entry, not a session.
    public var isKeyValueEntry: Bool { attributes[Self.keyValueEntryMarker] != nil }

    public init(
        id: SessionID, attributes: [String: [UInt8]], createdAtMillis: Int64, lastAccessedAtMillis: Int64,
        version: UInt64
    ) {
        self.id = id
        self.attributes = attributes
        self.createdAtMillis = createdAtMillis
        self.lastAccessedAtMillis = lastAccessedAtMillis
        self.version = version
    }
}

/// One change to one attribute.
public enum SessionChange: Sendable, Equatable {
    /// Sets the attribute to these JSON bytes.
    case set(String, [UInt8])
    case remove(String)
    /// Adds to an integer attribute (a missing one counts as 0).
    case increment(String, by: Int64)

    public var attribute: String {
        switch self {
        case .set(let name, _), .remove(let name), .increment(let name, _): name
        }
    }
}

/// Changes to one session, applied all-or-nothing.
public struct SessionDelta: Sendable, Equatable {
    public var id: SessionID
    public var changes: [SessionChange]
    /// Create the session when it does not exist (a new session); otherwise
    /// a missing or expired session makes `apply` return nil.
    public var createIfMissing: Bool
    /// Written in the same atomic step, by stores that are also `IdempotencyStore`s.
    public var idempotencyRecord: IdempotencyRecord?

    public init(
        id: SessionID, changes: [SessionChange], createIfMissing: Bool = false,
        idempotencyRecord: IdempotencyRecord? = nil
    ) {
        self.id = id
        self.changes = changes
        self.createIfMissing = createIfMissing
        self.idempotencyRecord = idempotencyRecord
    }
}

/// What applying a delta produced.
public struct AppliedDelta: Sendable, Equatable {
    /// The session's version after the delta.
    public var version: UInt64
    /// The value of every incremented attribute after the delta.
    public var counters: [String: Int64]
    /// Whether the session was created by this delta.
    public var created: Bool

    public init(version: UInt64, counters: [String: Int64], created: Bool) {
        self.version = version
        self.counters = counters
        self.created = created
    }
}

/// A failure of a session store, with a stable code.
public struct SessionStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong. New codes may be added: switch over them with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's stable name, e.g. `unavailable` (in error answers and logs).
        public let rawValue: String
        private init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The backend (Redis, peers) cannot be reached; try again later (503).
        public static let unavailable = Code("unavailable")
        /// `increment` on an attribute that is not an integer.
        public static let typeMismatch = Code("typeMismatch")
        /// The store holds as many sessions as it may (503).
        public static let capacityExceeded = Code("capacityExceeded")
        /// The session would exceed the size cap; nothing was written.
        public static let sessionTooLarge = Code("sessionTooLarge")
        /// An attribute could not be encoded or decoded.
        public static let invalidValue = Code("invalidValue")
        /// The delta's idempotency record was completed by another run of the
        /// same request (a retry that took over a claim); nothing was written.
        /// `IdempotencyMiddleware` answers with that run's response instead.
        public static let idempotencyKeyCompleted = Code("idempotencyKeyCompleted")
        /// A login under `PrincipalSessionLimit.refuseNewLogin` found the user at the limit;
        /// nothing was written (409).
        public static let principalLimitReached = Code("principalLimitReached")
        /// The store cannot do this (e.g. it does not index sessions by principal) (501).
        public static let unsupported = Code("unsupported")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// `idempotencyKeyCompleted` for the record stored under `storageKey` (named by its `IdempotentRequest.logID`).
    public static func idempotencyKeyCompleted(_ storageKey: String) -> SessionStoreError {
        SessionStoreError(
            .idempotencyKeyCompleted,
            "the Idempotency-Key (record \(IdempotentRequest.logID(storageKey: storageKey))) was completed by another run of the request; nothing written"
        )
    }
}

/// Where sessions live. Every store behaves the same; the conformance suite
/// in `SessionStoreConformance` checks it.
///
/// All methods are atomic per session and may block (network stores).
public protocol SessionStore: Sendable {
    var expiry: SessionExpiry { get }

    /// The live session with this ID, or nil when unknown or expired.
    /// Refreshes the idle timer, at most once per `expiry.touchIntervalMillis`.
    func load(_ id: SessionID) throws -> SessionSnapshot?

    /// Applies all changes atomically and refreshes the idle timer. Returns
    /// nil, changing nothing, when the session does not exist and
    /// `createIfMissing` is false.
    func apply(_ delta: SessionDelta) throws -> AppliedDelta?

    /// Moves a session's data to `newID`; the old ID stops working. False when
    /// `id` does not exist. `newID` keeps the old ID's `slotTag` (as `Session`
    /// makes it), so a sharded store may refuse one that does not.
    func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool

    /// Deletes the session (a no-op when it does not exist).
    func invalidate(_ id: SessionID) throws
}

/// Read-your-writes, for stores whose copies on other nodes may lag behind
/// (replication). After a request wrote to a session, the request cycle
/// (`SessionRequest`) asks for a token naming this node's state of it and
/// gives it to the client in a cookie; the client's next request, on any
/// node, catches up to it first. Stores where every node reads the same state
/// (Redis, a single node's memory) do not adopt this protocol.
public protocol ReadYourWritesStore: SessionStore {
    /// A token naming this node's state of session `id`, or nil.
    func readToken(for id: SessionID) -> String?

    /// Waits, bounded, until this node's copy of `id` is at least as new as
    /// `token` (from `readToken` on any node), fetching it from peers when
    /// needed. Returns false when it gave up: the request then sees what this
    /// node has — unless the store must never serve an older state than a
    /// client saw (replication in sync mode with a majority quorum): then it
    /// throws `unavailable` instead.
    func catchUp(_ id: SessionID, to token: String) throws -> Bool
}

/// Reads a JSON integer (as written for counters) from attribute bytes.
public func decodeCounter(_ bytes: [UInt8]) -> Int64? {
    guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
    return Int64(String(decoding: bytes, as: UTF8.self))
}

/// The value of an integer attribute (`current`, or 0 when absent) plus `amount`.
/// Throws `typeMismatch` when the attribute is not an integer or the sum overflows.
public func incrementedCounter(_ current: [UInt8]?, by amount: Int64, attribute: String) throws(SessionStoreError)
    -> Int64
{
    var value: Int64 = 0
    if let current {
        guard let n = decodeCounter(current) else {
            throw SessionStoreError(.typeMismatch, "attribute '\(attribute)' is not an integer")
        }
        value = n
    }
    let (sum, overflow) = value.addingReportingOverflow(amount)
    if overflow { throw SessionStoreError(.typeMismatch, "attribute '\(attribute)' would overflow") }
    return sum
}

/// The JSON bytes of a counter value.
public func encodeCounter(_ value: Int64) -> [UInt8] { Array(String(value).utf8) }
