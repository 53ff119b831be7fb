import Crypto
import SessionCore
import SystemSupport

/// A key/value store with per-key expiry on top of any `SessionStore`: the
/// ground the frameworks' generic storage APIs (Hummingbird's
/// `PersistDriver`) stand on, so they can use the memory, Redis or
/// replicated store.
///
/// Each key is one session, under the ID `base64url(SHA-256(namespace + key))`
/// (the stores accept only IDs of the shape the core issues). Its
/// attributes: `value` (the JSON bytes), `expiresAt` (the per-key expiry,
/// milliseconds since 1970, when one was set), `epoch` (a counter bumped by
/// every successful `create`) and `create.<epoch>` (counters `create` races
/// on), and `SessionSnapshot.keyValueEntryMarker`, so that the session
/// middlewares never serve an entry as a session (its ID can be computed by
/// anyone who knows the key). An entry without `value`, or past its
/// `expiresAt`, is absent.
///
/// Entries are never invalidated: the replicated store keeps an invalidated
/// ID as a tombstone that can never be used again, and a removed key must
/// be usable again. `remove` clears the value instead; the store's own
/// expiry reclaims the space.
///
/// `create` is a compare-and-set built from the stores' atomic increments:
/// every creator that found the entry absent at epoch `e` increments
/// `create.<e>`; only the one that gets 1 writes its value (and bumps the
/// epoch). Exact on the memory and Redis stores; on the replicated store,
/// creators on two nodes at the same instant may both see 1 (each node
/// counts its own increments first), as with any concurrent write there.
/// A creator that dies between its two steps leaves the key uncreatable
/// until the store's idle timeout removes the entry.
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
    static let epochAttribute = "epoch"
    static func createAttribute(_ epoch: Int64) -> String { "create.\(epoch)" }
    /// Marks every entry as one (`SessionSnapshot.keyValueEntryMarker`): never served as a session.
    static let marker = SessionChange.set(SessionSnapshot.keyValueEntryMarker, Array("true".utf8))

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
    /// Returns false (nothing written) when one is, or when another
    /// `create` of the same key is winning at the same time.
    public func create(key: String, value: [UInt8], expiresInMillis: Int64?) async throws -> Bool {
        let (store, id, clock) = (store, id(for: key), clock)
        return try await executor.run {
            for _ in 0..<4 {
                let snapshot = try store.load(id)
                if let snapshot, Self.isLive(snapshot, now: clock.nowMillis()) { return false }
                // Absent at this epoch: race the other creators for it.
                let epoch = snapshot.flatMap { $0.attributes[Self.epochAttribute] }.flatMap(decodeCounter) ?? 0
                let race = Self.createAttribute(epoch)
                guard
                    let claim = try store.apply(
                        SessionDelta(id: id, changes: [.increment(race, by: 1), Self.marker], createIfMissing: true))
                else { throw SessionStoreError(.unavailable, "store refused to create an entry") }
                guard claim.counters[race] == 1 else { return false }
                var changes: [SessionChange] = [.set(Self.valueAttribute, value), .increment(Self.epochAttribute, by: 1)]
                if let expiresInMillis {
                    changes.append(.set(Self.expiresAtAttribute, encodeCounter(clock.nowMillis() + expiresInMillis)))
                } else {
                    changes.append(.remove(Self.expiresAtAttribute))
                }
                if epoch >= 2 { changes.append(.remove(Self.createAttribute(epoch - 2))) }  // long-finished races
                if try store.apply(SessionDelta(id: id, changes: changes)) != nil { return true }
                // The entry expired in the store between the two steps: start again.
            }
            throw SessionStoreError(.unavailable, "could not create the entry: it kept expiring")
        }
    }

    /// Stores `value` under `key`, replacing any value. With
    /// `expiresInMillis` nil a live entry keeps its expiry (a new or expired
    /// one gets none); only the value attribute is written, atomically.
    public func set(key: String, value: [UInt8], expiresInMillis: Int64?) async throws {
        let (store, id, clock) = (store, id(for: key), clock)
        try await executor.run {
            var changes: [SessionChange] = [.set(Self.valueAttribute, value), Self.marker]
            let now = clock.nowMillis()
            if let expiresInMillis {
                changes.append(.set(Self.expiresAtAttribute, encodeCounter(now + expiresInMillis)))
            } else if let snapshot = try store.load(id), !Self.isLive(snapshot, now: now) {
                changes.append(.remove(Self.expiresAtAttribute))  // an absent entry's value starts a new life
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

    /// Deletes the value under `key` (a no-op when there is none).
    public func remove(key: String) async throws {
        let (store, id) = (store, id(for: key))
        try await executor.run {
            _ = try store.apply(
                SessionDelta(id: id, changes: [.remove(Self.valueAttribute), .remove(Self.expiresAtAttribute)]))
        }
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
