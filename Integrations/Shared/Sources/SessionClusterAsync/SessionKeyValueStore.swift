import Crypto
import SessionCore

/// A key/value store with per-key expiry on top of any `SessionStore`: the
/// ground the frameworks' generic storage APIs (Hummingbird's
/// `PersistDriver`) stand on, so they can use the memory, Redis or
/// replicated store.
///
/// Each key is one session, under the ID `base64url(SHA-256(namespace + key))`
/// (the stores accept only IDs of the shape the core issues, so a key never
/// is one). Its attributes: `value` (the JSON bytes), `expiresAt` (the
/// per-key expiry, milliseconds since 1970, when one was set) and
/// `persist.claim` (a counter written by `create`).
///
/// Lifetimes: an entry expires at its own `expiresAt` (checked on read) and,
/// like every session, when the store's `SessionExpiry` says so (idle since
/// the last read or write, or absolute age). Configure the store's idle
/// timeout at least as long as the longest expiry used.
public struct SessionKeyValueStore: Sendable {
    /// Where the entries live.
    public let store: any SessionStore
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// The clock of per-key expiry.
    public let clock: SessionClock
    /// Prefixed to every key before hashing, so two apps on one store do not meet.
    public let namespace: String

    static let valueAttribute = "value"
    static let expiresAtAttribute = "expiresAt"
    static let claimAttribute = "persist.claim"
    /// A claimed entry whose value never came (its writer died) counts as gone after this long.
    static let abandonedClaimMillis: Int64 = 10_000

    /// A key/value view of `store`.
    public init(
        store: any SessionStore, executor: BlockingExecutor = .shared, clock: SessionClock = .system,
        namespace: String = "kv:"
    ) {
        self.store = store
        self.executor = executor
        self.clock = clock
        self.namespace = namespace
    }

    /// The session ID that holds `key`.
    public func id(for key: String) -> SessionID {
        let digest = SHA256.hash(data: Array((namespace + key).utf8))
        // 32 bytes → 43 base64url characters: exactly the shape of an issued ID.
        return SessionID(rawValue: base64URLEncode(Array(digest)))!
    }

    /// An entry as read.
    public struct Entry: Sendable, Equatable {
        /// The value's JSON bytes.
        public var value: [UInt8]
        /// Milliseconds left before the entry expires if nothing touches it:
        /// the lesser of its own expiry and the store's (idle, absolute).
        public var ttlMillis: Int64
        /// Whether the entry has an expiry of its own.
        public var hasOwnExpiry: Bool
    }

    /// Stores `value` under `key` unless a live entry is there already.
    /// Returns false (nothing written) when one is.
    public func create(key: String, value: [UInt8], expiresInMillis: Int64?) async throws -> Bool {
        let (store, id, clock) = (store, id(for: key), clock)
        return try await executor.run {
            for _ in 0..<4 {
                // Atomic create-if-missing: `created` tells whether this call made the entry.
                guard
                    let claim = try store.apply(
                        SessionDelta(id: id, changes: [.increment(Self.claimAttribute, by: 1)], createIfMissing: true))
                else { throw SessionStoreError(.unavailable, "store refused to create an entry") }
                if claim.created {
                    var changes: [SessionChange] = [.set(Self.valueAttribute, value)]
                    if let expiresInMillis {
                        changes.append(.set(Self.expiresAtAttribute, encodeCounter(clock.nowMillis() + expiresInMillis)))
                    }
                    if try store.apply(SessionDelta(id: id, changes: changes)) != nil { return true }
                    continue  // expired between the two steps: start again
                }
                guard let snapshot = try store.load(id) else { continue }  // gone meanwhile
                let now = clock.nowMillis()
                if Self.isLive(snapshot, now: now) { return false }
                if snapshot.attributes[Self.valueAttribute] == nil
                    && now - snapshot.createdAtMillis < Self.abandonedClaimMillis
                {
                    return false  // another create is between its two steps
                }
                // An expired leftover: take it away atomically (one caller wins the move), then create anew.
                let leftover = SessionID.generate()
                if try store.regenerate(id, to: leftover) { try store.invalidate(leftover) }
            }
            throw SessionStoreError(.unavailable, "could not create the entry: it kept changing")
        }
    }

    /// Stores `value` under `key`, replacing any value. With
    /// `expiresInMillis` nil a live entry keeps its expiry (a new or expired
    /// one gets none); only the value attribute is written, atomically.
    public func set(key: String, value: [UInt8], expiresInMillis: Int64?) async throws {
        let (store, id, clock) = (store, id(for: key), clock)
        try await executor.run {
            var changes: [SessionChange] = [.set(Self.valueAttribute, value)]
            let now = clock.nowMillis()
            if let expiresInMillis {
                changes.append(.set(Self.expiresAtAttribute, encodeCounter(now + expiresInMillis)))
            } else if let snapshot = try store.load(id), let expiresAt = Self.expiresAt(snapshot), expiresAt <= now {
                changes.append(.remove(Self.expiresAtAttribute))  // an expired entry's value starts a new life
            }
            guard try store.apply(SessionDelta(id: id, changes: changes, createIfMissing: true)) != nil else {
                throw SessionStoreError(.unavailable, "store refused to write an entry")
            }
        }
    }

    /// The live entry under `key`, or nil.
    public func get(key: String) async throws -> Entry? {
        let (store, id, clock) = (store, id(for: key), clock)
        return try await executor.run { () throws -> Entry? in
            guard let snapshot = try store.load(id) else { return nil }
            let now = clock.nowMillis()
            guard Self.isLive(snapshot, now: now), let value = snapshot.attributes[Self.valueAttribute] else {
                return nil
            }
            var ttl = store.expiry.idleTimeoutMillis
            if let absolute = store.expiry.absoluteTimeoutMillis {
                ttl = min(ttl, snapshot.createdAtMillis + absolute - now)
            }
            let own = Self.expiresAt(snapshot)
            if let own { ttl = min(ttl, own - now) }
            return Entry(value: value, ttlMillis: max(0, ttl), hasOwnExpiry: own != nil)
        }
    }

    /// Deletes the entry under `key` (a no-op when there is none).
    public func remove(key: String) async throws {
        let (store, id) = (store, id(for: key))
        try await executor.run { try store.invalidate(id) }
    }

    static func expiresAt(_ snapshot: SessionSnapshot) -> Int64? {
        snapshot.attributes[expiresAtAttribute].flatMap(decodeCounter)
    }

    /// Has a value and has not passed its own expiry.
    static func isLive(_ snapshot: SessionSnapshot, now: Int64) -> Bool {
        guard snapshot.attributes[valueAttribute] != nil else { return false }
        if let expiresAt = expiresAt(snapshot), expiresAt <= now { return false }
        return true
    }
}
