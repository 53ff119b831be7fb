#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization

/// The session of one request: typed reads and writes over a store.
///
/// Nothing touches the store until needed: a request that only reads loads
/// the session once; writes are collected as per-attribute changes and saved
/// by `commit()` (the session middleware calls it after the handler). An
/// `increment` goes to the store at once, atomically, so concurrent requests
/// on any node never lose one.
///
/// With `deferWrites` (requests carrying an `Idempotency-Key`), increments
/// are held too, and everything is written at commit in one atomic step with
/// the idempotency record: a crash can never leave the effect without the
/// record. `increment` then returns the value seen at load plus the amount;
/// the store still adds exactly the amount.
public final class Session: Sendable {
    public let store: any SessionStore

    struct State {
        var id: SessionID?
        var existsInStore: Bool
        var attributes: [String: [UInt8]]
        var version: UInt64
        var pending: [String: SessionChange] = [:]
        var pendingOrder: [String] = []
        /// The client must be sent a new cookie (new session or regenerated ID).
        var issueCookie = false
        /// The client's cookie must be expired (invalidated, no new session).
        var expireCookie = false
        /// This request changed the session in the store (a write or a new ID).
        var wroteToStore = false
        /// The slot tag of the IDs this session gets (nil: random).
        var slotTag: String?
        /// A login moved the session to its principal's slot: an idempotency record (kept
        /// in the request's slot) is written just after the changes, not in their step.
        var recordApart = false
    }

    let state: Mutex<State>
    public let deferWrites: Bool

    /// A session for a request that carried `snapshot` (nil: no valid session).
    /// A key/value entry (`SessionSnapshot.isKeyValueEntry`) is no session: a
    /// cookie naming one gets a new session.
    ///
    /// A new ID (a new session, or a regenerated one) keeps `slotTag`, or
    /// else the tag of the ID it replaces (`SessionID.slotTag`): pass the
    /// `IdempotentRequest.slotTag` of a request with an `Idempotency-Key`, so
    /// a session it creates lands beside its record in a sharded store.
    public init(store: any SessionStore, snapshot: SessionSnapshot?, deferWrites: Bool = false, slotTag: String? = nil) {
        let snapshot = snapshot?.isKeyValueEntry == true ? nil : snapshot
        self.store = store
        self.deferWrites = deferWrites
        state = Mutex(State(
            id: snapshot?.id, existsInStore: snapshot != nil, attributes: snapshot?.attributes ?? [:],
            version: snapshot?.version ?? 0, slotTag: slotTag ?? snapshot?.id.slotTag))
    }

    /// The ID, or nil while no session exists for this client.
    public var id: SessionID? { state.withLock { $0.id } }

    /// The stored version as last seen by this request (0 when none).
    public var version: UInt64 { state.withLock { $0.version } }

    /// Whether this request changed the session in the store (a write or a new ID).
    public var wroteToStore: Bool { state.withLock { $0.wroteToStore } }

    /// Whether the session holds no attributes.
    public var isEmpty: Bool { state.withLock { $0.attributes.isEmpty } }

    public var attributeNames: [String] { state.withLock { Array($0.attributes.keys).sorted() } }

    /// The attribute decoded as `T`, or nil when absent. Throws `invalidValue` when it does not decode.
    public func get<T: Decodable>(_ name: String, as type: T.Type = T.self) throws -> T? {
        guard let bytes = state.withLock({ $0.attributes[name] }) else { return nil }
        // Fast paths for the common scalar shapes; everything else goes through JSONDecoder.
        if T.self == Int64.self || T.self == Int.self, let n = decodeCounter(bytes) {
            return T.self == Int64.self ? n as? T : Int(exactly: n) as? T
        }
        if T.self == String.self, bytes.count >= 2, bytes.first == 34, bytes.last == 34,
            !bytes.dropFirst().dropLast().contains(where: { $0 == 92 || $0 == 34 || $0 < 32 })
        {
            return String(decoding: bytes.dropFirst().dropLast(), as: UTF8.self) as? T
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw SessionStoreError(.invalidValue, "attribute '\(name)' is not a \(T.self): \(error)")
        }
    }

    /// The raw JSON bytes of an attribute.
    public func rawValue(_ name: String) -> [UInt8]? { state.withLock { $0.attributes[name] } }

    /// Sets an attribute (saved at commit). Names under `sessioncluster.` are
    /// the machinery's (`SessionPrincipal`): setting one throws `invalidValue`.
    public func set<T: Encodable>(_ name: String, _ value: T) throws {
        try Self.checkNotReserved(name)
        let bytes: [UInt8]
        do {
            bytes = Array(try JSONEncoder().encode(value))
        } catch {
            throw SessionStoreError(.invalidValue, "attribute '\(name)' cannot be encoded: \(error)")
        }
        record(.set(name, bytes))
    }

    /// Removes an attribute (saved at commit). A reserved name (`sessioncluster.`) is left alone:
    /// `logOut()` clears the principal.
    public func remove(_ name: String) {
        guard !name.hasPrefix(SessionPrincipal.reservedPrefix) else { return }
        record(.remove(name))
    }

    static func checkNotReserved(_ name: String) throws(SessionStoreError) {
        if name.hasPrefix(SessionPrincipal.reservedPrefix) {
            throw SessionStoreError(
                .invalidValue, "attribute names under '\(SessionPrincipal.reservedPrefix)' are reserved (log in with Session.logIn)")
        }
    }

    private func record(_ change: SessionChange) {
        state.withLock { s in
            switch change {
            case .set(let name, let bytes): s.attributes[name] = bytes
            case .remove(let name): s.attributes[name] = nil
            case .increment: break
            }
            if s.pending.updateValue(change, forKey: change.attribute) == nil {
                s.pendingOrder.append(change.attribute)
            }
        }
    }

    /// Atomically adds `amount` to an integer attribute in the store and
    /// returns the new value. Creates the session when there is none. Pending
    /// changes of this request are saved in the same step.
    @discardableResult
    public func increment(_ name: String, by amount: Int64 = 1) throws -> Int64 {
        try Self.checkNotReserved(name)
        if deferWrites { return try deferredIncrement(name, by: amount) }
        let applied = try save(extra: [.increment(name, by: amount)])
        guard let value = applied.counters[name] else {
            throw SessionStoreError(.invalidValue, "store did not return counter '\(name)'")
        }
        state.withLock { $0.attributes[name] = encodeCounter(value) }
        return value
    }

    private func deferredIncrement(_ name: String, by amount: Int64) throws -> Int64 {
        try state.withLock { s throws(SessionStoreError) -> Int64 in
            let value = try incrementedCounter(s.attributes[name], by: amount, attribute: name)
            s.attributes[name] = encodeCounter(value)
            let merged: SessionChange =
                switch s.pending[name] {
                case .increment(_, let earlier)?: .increment(name, by: earlier + amount)
                case .set?, .remove?: .set(name, encodeCounter(value))
                case nil: .increment(name, by: amount)
                }
            if s.pending.updateValue(merged, forKey: name) == nil { s.pendingOrder.append(name) }
            return value
        }
    }

    /// Gives the session a new ID (call it at login, against session
    /// fixation); the old ID stops working at once.
    public func regenerateID() throws {
        let (old, exists) = state.withLock { ($0.id, $0.existsInStore) }
        guard let old, exists else {
            // Not stored yet: the ID it gets at commit is new anyway.
            state.withLock { s in
                if s.id != nil { s.id = nil }
            }
            return
        }
        let newID = SessionID.generate(slotTag: old.slotTag)  // one slot: an atomic move in a sharded store
        if try store.regenerate(old, to: newID) {
            state.withLock { s in
                s.id = newID
                s.issueCookie = true
                s.expireCookie = false
                s.wroteToStore = true
            }
        } else {
            // Expired meanwhile: what this request wrote becomes a new session.
            state.withLock { s in
                s.id = nil
                s.existsInStore = false
            }
        }
    }

    /// Deletes the session everywhere and forgets its data; the cookie is
    /// expired unless the request writes again (which starts a new session).
    public func invalidate() throws {
        let id = state.withLock { $0.id }
        if let id { try store.invalidate(id) }
        state.withLock { s in
            let hadCookie = s.id != nil || s.issueCookie
            s = State(id: nil, existsInStore: false, attributes: [:], version: 0)
            s.expireCookie = hadCookie
        }
    }

    /// What the response must do with the session cookie.
    public enum CookieAction: Sendable, Equatable {
        case none
        case set(SessionID)
        case expire
    }

    /// Saves pending changes; returns what to do with the cookie.
    public func commit() throws -> CookieAction {
        try commit(idempotencyRecord: nil).cookie
    }

    /// Decides the cookie before anything is written: a new session gets its
    /// ID now, so the response (and an idempotency record of it) can carry it.
    public func prepareCommit() -> CookieAction {
        state.withLock { s in
            if !s.pending.isEmpty && !s.existsInStore && s.id == nil {
                s.id = SessionID.generate(slotTag: s.slotTag)
                s.issueCookie = true
                s.expireCookie = false
            }
            if s.issueCookie, let id = s.id { return .set(id) }
            if s.expireCookie { return .expire }
            return .none
        }
    }

    /// Saves pending changes, with `idempotencyRecord` in the same atomic
    /// step. `recorded` tells whether the record was written (only when there
    /// were changes to save and the store is an `IdempotencyStore`).
    public func commit(idempotencyRecord: IdempotencyRecord?) throws -> (cookie: CookieAction, recorded: Bool) {
        _ = prepareCommit()
        let hasPending = state.withLock { !$0.pending.isEmpty }
        // The existential cast only when there is a record to keep (it showed in profiles of every request).
        let record = idempotencyRecord != nil && store is any IdempotencyStore ? idempotencyRecord : nil
        if hasPending { _ = try save(extra: [], record: record) }
        let cookie = state.withLock { s -> CookieAction in
            if s.issueCookie, let id = s.id { return .set(id) }
            if s.expireCookie { return .expire }
            return .none
        }
        return (cookie, hasPending && record != nil)
    }

    /// Applies pending changes plus `extra` in one atomic delta.
    private func save(extra: [SessionChange], record: IdempotencyRecord? = nil) throws -> AppliedDelta {
        let (id, exists, changes, slotTag) = state.withLock { s -> (SessionID?, Bool, [SessionChange], String?) in
            (s.id, s.existsInStore, s.pendingOrder.compactMap { s.pending[$0] } + extra, s.slotTag)
        }
        var applied: AppliedDelta? = nil
        var usedID: SessionID
        let apart = state.withLock { $0.recordApart } ? record : nil
        let record = apart == nil ? record : nil
        if exists, let id {
            usedID = id
            applied = try store.apply(
                SessionDelta(id: id, changes: changes, createIfMissing: false, idempotencyRecord: record))
        } else {
            usedID = id ?? SessionID.generate(slotTag: slotTag)  // an ID chosen by prepareCommit, or a fresh one
        }
        if applied == nil {
            // New session, or the old one expired during the request: never revive an ID.
            if exists { usedID = SessionID.generate(slotTag: slotTag) }
            applied = try store.apply(
                SessionDelta(id: usedID, changes: changes, createIfMissing: true, idempotencyRecord: record))
        }
        guard let applied else {
            throw SessionStoreError(.unavailable, "store refused to create a session")
        }
        if let apart { try (store as? any IdempotencyStore)?.complete(apart) }
        state.withLock { s in
            if s.id != usedID || applied.created {
                s.issueCookie = true
                s.expireCookie = false
            }
            s.id = usedID
            s.existsInStore = true
            s.wroteToStore = true
            s.version = applied.version
            s.pending = [:]
            s.pendingOrder = []
        }
        return applied
    }
}
