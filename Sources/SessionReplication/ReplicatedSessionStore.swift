#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import SessionCore
import Synchronization

/// The node-local half of the replicated store (docs/replication.md): every
/// session as a merge-able `ReplicatedSession`, with no networking.
///
/// Every local write hands what peers need to `onUpdate` (sessions) or
/// `onRecord` (idempotency records completed without a delta), outside the
/// lock; peers feed them to `merge(_:)` and `merge(record:)`, in any order,
/// duplicated or not. `snapshot(chunkSize:)` and `recordSnapshot()` give the
/// full state for a state transfer.
///
/// Invalidated sessions stay as tombstones, touched at invalidation, until
/// they expire like a session (idle or absolute timeout): a late delta for
/// them is then expired itself, and refused.
///
/// Caps: `maxSessions` counts sessions and tombstones; when full, expired ones
/// are removed first, then new sessions are refused (`capacityExceeded`);
/// live sessions are never dropped. `maxSessionBytes` caps a local write
/// (`sessionTooLarge`, nothing written). Merges ignore both caps: the peer
/// already admitted the write, and refusing it would make the nodes diverge.
public final class ReplicatedSessionStore: SessionStore, IdempotencyStore {
    public let expiry: SessionExpiry
    public let clock: SessionClock
    /// Stamps every local change; moved past every merged update.
    public let hlc: HybridLogicalClock
    /// At most this many sessions and tombstones for new local sessions.
    public let maxSessions: Int
    /// At most this many bytes of attribute names and values per session.
    public let maxSessionBytes: Int

    /// An idempotency claim or outcome; only completed ones are replicated.
    struct Record {
        var fingerprint: String
        /// nil while in progress.
        var response: StoredResponse?
        var expiresAt: Int64
    }

    struct Contents {
        var sessions: [SessionID: ReplicatedSession] = [:]
        var records: [String: Record] = [:]

        /// Keeps a completed record, unless one expiring later is kept already.
        mutating func keep(_ record: IdempotencyRecord, expiresAt: Int64, now: Int64) {
            guard expiresAt > now else { return }
            if let mine = records[record.key], mine.response != nil, mine.expiresAt >= expiresAt { return }
            records[record.key] = Record(
                fingerprint: record.fingerprint, response: record.response, expiresAt: expiresAt)
        }
    }

    struct Sinks {
        var onUpdate: (@Sendable ([SessionUpdate]) -> Void)?
        var onRecord: (@Sendable (ReplicatedRecord) -> Void)?
        var onFetch: (@Sendable (SessionID, UInt64) -> Int)?
    }

    /// How `catchUp` waits for a session newer than this node's copy.
    public struct CatchUpPolicy: Sendable {
        /// Wait this long for the change to arrive by itself...
        public var waitMillis: Int64
        /// ...then ask the peers for the session (`onFetch`) and wait this much longer.
        public var fetchTimeoutMillis: Int64
        public init(waitMillis: Int64 = 5, fetchTimeoutMillis: Int64 = 100) {
            self.waitMillis = waitMillis
            self.fetchTimeoutMillis = fetchTimeoutMillis
        }
    }

    /// How many `catchUp` calls found the copy current, waited, fetched, or gave up.
    public struct CatchUpCounts: Sendable, Equatable {
        public var current = 0
        public var waited = 0
        public var fetched = 0
        public var gaveUp = 0
    }

    public let catchUpPolicy: CatchUpPolicy
    private let contents = FastLock(Contents())
    private let sinks = FastLock(Sinks())
    private let sweeper = RepeatingTimer()
    private let ready = Atomic<Bool>(true)
    private let catchUps = FastLock(CatchUpCounts())  // taken by every request that carries a read token

    /// Who waits in `catchUp`, for which session, and the fetch replies they count.
    struct Waiters {
        var waiting: [SessionID: Int] = [:]
        /// Bumped by every merge of a session someone waits for.
        var merges: UInt64 = 0
        var nextFetch: UInt64 = 0
        var fetchReplies: [UInt64: Int] = [:]
    }

    private let waiters = ConditionLock(Waiters())

    /// A store for node `node` (the HLC's node id, unique in the cluster).
    public init(
        node: UInt32, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        maxSessions: Int = 1_000_000, maxSessionBytes: Int = 64 * 1024, catchUpPolicy: CatchUpPolicy = CatchUpPolicy()
    ) {
        self.catchUpPolicy = catchUpPolicy
        self.expiry = expiry
        self.clock = clock
        self.hlc = HybridLogicalClock(node: node, wallClock: clock.nowMillis)
        self.maxSessions = maxSessions
        self.maxSessionBytes = maxSessionBytes
    }

    deinit { stopSweeper() }

    /// Receives the updates of every local write, in order (regenerate: the
    /// new ID's state, then the old ID's tombstone). Called outside the lock.
    public var onUpdate: (@Sendable ([SessionUpdate]) -> Void)? {
        get { sinks.withLock { $0.onUpdate } }
        set { sinks.withLock { $0.onUpdate = newValue } }
    }

    /// Receives each record completed by `complete(_:)` (without a delta).
    public var onRecord: (@Sendable (ReplicatedRecord) -> Void)? {
        get { sinks.withLock { $0.onRecord } }
        set { sinks.withLock { $0.onRecord = newValue } }
    }

    /// Asks the peers for a session's full state, for `catchUp`, with a
    /// request number; returns how many peers were asked. Each reply comes
    /// back through `mergeFetchReply`.
    public var onFetch: (@Sendable (SessionID, UInt64) -> Int)? {
        get { sinks.withLock { $0.onFetch } }
        set { sinks.withLock { $0.onFetch = newValue } }
    }

    /// Merges a peer's answer to fetch `request` (`update` nil: the peer does not have the session).
    public func mergeFetchReply(_ id: SessionID, request: UInt64, _ update: SessionUpdate?) {
        if let update, hlc.observe(update.state.version) { mergeLocked(update) }
        notifyMerged(id, fetchReply: request)
    }

    /// Sessions and tombstones held, expired ones not yet swept included.
    public var count: Int { contents.withLock { $0.sessions.count } }

    /// Whether the store serves requests. A replication node keeps it false
    /// until its state transfer is done: until then every request fails with
    /// `unavailable` (503) instead of seeing sessions that have not arrived.
    public var isReady: Bool {
        get { ready.load(ordering: .acquiring) }
        set { ready.store(newValue, ordering: .releasing) }
    }

    private func checkReady() throws(SessionStoreError) {
        guard isReady else {
            throw SessionStoreError(.unavailable, "this node is still receiving the sessions from its peers")
        }
    }

    // MARK: Read-your-writes

    /// The session's `seen` vector on this node (a `ReadToken`).
    public func readToken(for id: SessionID) -> String? {
        contents.withLock { $0.sessions[id]?.seen }.map { ReadToken($0).description }
    }

    /// Waits for a copy holding every write `token` names: up to
    /// `catchUpPolicy.waitMillis` for the changes to arrive, then asks the
    /// peers (`onFetch`) and waits up to `fetchTimeoutMillis` more, or until
    /// every peer asked has answered. Woken by merges of this session, not
    /// by polling. Malformed tokens and tokens from the future (beyond the
    /// clock's drift limit: forged) are ignored at once.
    public func catchUp(_ id: SessionID, to token: String) -> Bool {
        guard let wanted = ReadToken(token) else { return false }
        let limit = clock.nowMillis() + hlc.maxForwardDriftMillis
        guard wanted.stamps.allSatisfy({ $0.millis <= limit }) else { return false }
        func isCurrent() -> Bool { contents.withLock { $0.sessions[id]?.contains(wanted) ?? false } }
        if isCurrent() {
            catchUps.withLock { $0.current += 1 }
            return true
        }
        waiters.withLock { $0.waiting[id, default: 0] += 1 }
        defer {
            waiters.withLock { w in
                w.waiting[id] = w.waiting[id].flatMap { $0 > 1 ? $0 - 1 : nil }
            }
        }
        if waitForMerge(of: id, millis: catchUpPolicy.waitMillis, until: isCurrent) {
            catchUps.withLock { $0.waited += 1 }
            return true
        }
        // Ask the peers; stop early once all of them answered without the changes.
        let request = waiters.withLock { w -> UInt64 in
            w.nextFetch += 1
            w.fetchReplies[w.nextFetch] = 0
            return w.nextFetch
        }
        defer { waiters.withLock { _ = $0.fetchReplies.removeValue(forKey: request) } }
        let asked = sinks.withLock { $0.onFetch }?(id, request) ?? 0
        let fetched =
            asked > 0
            && waitForMerge(of: id, millis: catchUpPolicy.fetchTimeoutMillis) {
                isCurrent() || waiters.withLock { ($0.fetchReplies[request] ?? 0) >= asked }
            } && isCurrent()
        catchUps.withLock { fetched ? ($0.fetched += 1) : ($0.gaveUp += 1) }
        return fetched
    }

    /// Sleeps until `done()` or the deadline, re-checking after each merge of session `id`.
    private func waitForMerge(of id: SessionID, millis: Int64, until done: () -> Bool) -> Bool {
        let deadline = monotonicNanos() + UInt64(max(0, millis)) * 1_000_000
        var seenMerges = waiters.withLock { $0.merges }
        while true {
            if done() { return true }
            let (woken, merges) = waiters.wait(
                until: deadline, for: { $0.merges != seenMerges }, then: { w, woken in (woken, w.merges) })
            if !woken { return done() }
            seenMerges = merges
        }
    }

    /// Wakes the `catchUp` calls waiting for session `id`.
    private func notifyMerged(_ id: SessionID, fetchReply request: UInt64? = nil) {
        let wake = waiters.withLock { w -> Bool in
            if let request, let n = w.fetchReplies[request] { w.fetchReplies[request] = n + 1 }
            guard w.waiting[id] != nil else { return false }
            w.merges &+= 1
            return true
        }
        if wake { waiters.broadcast() }
    }

    /// What `catchUp` has done so far.
    public var catchUpCounts: CatchUpCounts { catchUps.withLock { $0 } }

    // MARK: SessionStore

    public func load(_ id: SessionID) throws -> SessionSnapshot? {
        try checkReady()
        let now = clock.nowMillis()
        let (snapshot, touch) = contents.withLock { contents -> (SessionSnapshot?, SessionUpdate?) in
            guard var session = live(&contents, id, now: now) else { return (nil, nil) }
            var touch: SessionUpdate?
            if now - session.lastAccessMillis >= expiry.touchIntervalMillis {
                session.touch(nowMillis: now)
                contents.sessions[id] = session
                touch = SessionUpdate(id: id, session: session, attributes: [:], origin: hlc.node)
            }
            return (session.snapshot(id: id), touch)
        }
        if let touch { emit([touch]) }
        return snapshot
    }

    /// Also returns nil for an invalidated ID, even with `createIfMissing`:
    /// a tombstoned ID is never reused.
    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        try checkReady()
        let now = clock.nowMillis()
        let result = try contents.withLock { contents throws(SessionStoreError) -> (AppliedDelta, SessionUpdate)? in
            var session: ReplicatedSession
            let created: Bool
            if let existing = live(&contents, delta.id, now: now) {
                session = existing
                created = false
            } else {
                guard delta.createIfMissing, contents.sessions[delta.id] == nil else { return nil }
                try makeRoom(&contents, now: now)
                session = ReplicatedSession(createdAtMillis: now, at: hlc.now())
                created = true
            }
            let (update, counters) = try session.apply(delta, clock: hlc, nowMillis: now)
            let bytes = Self.byteCount(session)
            guard bytes <= maxSessionBytes else {
                throw SessionStoreError(
                    .sessionTooLarge, "session would hold \(bytes) bytes, the cap is \(maxSessionBytes)")
            }
            contents.sessions[delta.id] = session
            if let record = delta.idempotencyRecord {
                contents.keep(record, expiresAt: now + record.ttlMillis, now: now)
            }
            return (AppliedDelta(version: session.version.packedVersion, counters: counters, created: created), update)
        }
        guard let (applied, update) = result else { return nil }
        emit([update])
        return applied
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        try checkReady()
        let now = clock.nowMillis()
        let updates = contents.withLock { contents -> [SessionUpdate]? in
            guard var session = live(&contents, id, now: now) else { return nil }
            session.touch(nowMillis: now)  // the tombstone lives an idle timeout from now
            let (moved, updates) = session.regenerate(from: id, to: newID, at: hlc.now(), nowMillis: now)
            contents.sessions[id] = session
            contents.sessions[newID] = moved
            return updates
        }
        guard let updates else { return false }
        emit(updates)
        return true
    }

    public func invalidate(_ id: SessionID) throws {
        try checkReady()
        let now = clock.nowMillis()
        let update = contents.withLock { contents -> SessionUpdate? in
            guard var session = live(&contents, id, now: now) else { return nil }
            session.touch(nowMillis: now)  // the tombstone lives an idle timeout from now
            session.invalidate(at: hlc.now())
            contents.sessions[id] = session
            return SessionUpdate(id: id, session: session)
        }
        if let update { emit([update]) }
    }

    // MARK: Replication

    /// Merges an update from a peer. Returns false, changing nothing, when
    /// its stamp is too far ahead of this node's clock (a broken peer clock).
    /// An unknown session is created only when the update is not expired.
    @discardableResult
    public func merge(_ update: SessionUpdate) -> Bool {
        guard hlc.observe(update.state.version) else { return false }
        mergeLocked(update)
        notifyMerged(update.id)
        return true
    }

    private func mergeLocked(_ update: SessionUpdate) {
        let now = clock.nowMillis()
        contents.withLock { contents in
            if var session = contents.sessions[update.id] {
                session.merge(update.state)
                contents.sessions[update.id] = session
            } else if !isExpired(update.state, now: now) {
                contents.sessions[update.id] = update.state
            }
            if let record = update.idempotencyRecord {
                // The write that carried the record refreshed lastAccess to its time.
                contents.keep(record, expiresAt: update.state.lastAccessMillis + record.ttlMillis, now: now)
            }
        }
    }

    /// Merges an idempotency record from a peer (kept unless already expired).
    public func merge(record: ReplicatedRecord) {
        let now = clock.nowMillis()
        contents.withLock { $0.keep(record.record, expiresAt: record.expiresAtMillis, now: now) }
    }

    /// The full state of one session or tombstone (nil when unknown or expired), for a peer's fetch.
    public func fullState(of id: SessionID) -> SessionUpdate? {
        let now = clock.nowMillis()
        return contents.withLock { contents in
            guard let session = contents.sessions[id], !isExpired(session, now: now) else { return nil }
            return SessionUpdate(id: id, session: session)
        }
    }

    /// Every unexpired session and tombstone as a full-state update, in chunks
    /// of at most `chunkSize`, for a state transfer.
    public func snapshot(chunkSize: Int) -> [[SessionUpdate]] {
        precondition(chunkSize > 0, "chunk size must be positive")
        let now = clock.nowMillis()
        let sessions = contents.withLock { $0.sessions }
        let all = sessions.filter { !isExpired($0.value, now: now) }
            .map { SessionUpdate(id: $0.key, session: $0.value) }
        return stride(from: 0, to: all.count, by: chunkSize)
            .map { Array(all[$0..<$0 + min(chunkSize, all.count - $0)]) }
    }

    /// Every unexpired completed idempotency record, for a state transfer.
    public func recordSnapshot() -> [ReplicatedRecord] {
        let now = clock.nowMillis()
        return contents.withLock { contents in
            contents.records.compactMap { key, record in
                guard let response = record.response, record.expiresAt > now else { return nil }
                let ttl = record.expiresAt - now
                return ReplicatedRecord(
                    record: IdempotencyRecord(
                        key: key, fingerprint: record.fingerprint, response: response, ttlMillis: ttl),
                    expiresAtMillis: record.expiresAt)
            }
        }
    }

    // MARK: IdempotencyStore (claims are local; completed records replicate)

    public func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim {
        try checkReady()
        let now = clock.nowMillis()
        return contents.withLock { contents in
            if let record = contents.records[key], record.expiresAt > now {
                guard record.fingerprint == fingerprint else { return .mismatch }
                return record.response.map { .completed($0) } ?? .inProgress
            }
            contents.records[key] = Record(fingerprint: fingerprint, response: nil, expiresAt: now + inProgressMillis)
            return .claimed
        }
    }

    public func complete(_ record: IdempotencyRecord) throws {
        let replicated = ReplicatedRecord(record: record, expiresAtMillis: clock.nowMillis() + record.ttlMillis)
        contents.withLock {
            $0.records[record.key] = Record(
                fingerprint: record.fingerprint, response: record.response, expiresAt: replicated.expiresAtMillis)
        }
        sinks.withLock { $0.onRecord }?(replicated)
    }

    public func abandon(key: String) throws {
        contents.withLock { contents in
            if let record = contents.records[key], record.response == nil { contents.records[key] = nil }
        }
    }

    // MARK: Expiry

    /// Removes expired sessions, tombstones and idempotency records; returns how many sessions and tombstones.
    @discardableResult
    public func sweep() -> Int {
        let now = clock.nowMillis()
        return contents.withLock { removeExpired(&$0, now: now) }
    }

    /// Sweeps every `intervalMillis` on a background timer until
    /// `stopSweeper()` or the store is released.
    public func startSweeper(intervalMillis: Int = 60_000) {
        sweeper.start(label: "replicated-session-sweeper", intervalMillis: intervalMillis) { [weak self] in self?.sweep() }
    }

    public func stopSweeper() { sweeper.stop() }

    // MARK: Helpers

    private func isExpired(_ session: ReplicatedSession, now: Int64) -> Bool {
        expiry.isExpired(createdAt: session.createdAtMillis, lastAccess: session.lastAccessMillis, now: now)
    }

    /// The live session at `id`, or nil when unknown, invalidated or expired (then removed).
    private func live(_ contents: inout Contents, _ id: SessionID, now: Int64) -> ReplicatedSession? {
        guard let session = contents.sessions[id] else { return nil }
        if isExpired(session, now: now) {
            contents.sessions[id] = nil
            return nil
        }
        return session.isInvalidated ? nil : session
    }

    /// Throws `capacityExceeded` when no session can be added, even after removing expired ones.
    private func makeRoom(_ contents: inout Contents, now: Int64) throws(SessionStoreError) {
        guard contents.sessions.count >= maxSessions else { return }
        removeExpired(&contents, now: now)
        guard contents.sessions.count < maxSessions else {
            throw SessionStoreError(.capacityExceeded, "the store holds \(maxSessions) sessions")
        }
    }

    @discardableResult
    private func removeExpired(_ contents: inout Contents, now: Int64) -> Int {
        let before = contents.sessions.count
        contents.sessions = contents.sessions.filter { !isExpired($0.value, now: now) }
        contents.records = contents.records.filter { $0.value.expiresAt > now }
        return before - contents.sessions.count
    }

    /// Attribute names and values, as `MemorySessionStore` counts them.
    private static func byteCount(_ session: ReplicatedSession) -> Int {
        session.attributes.reduce(0) { total, attribute in
            guard let value = attribute.value.value else { return total }
            return total + attribute.key.utf8.count + value.count
        }
    }

    private func emit(_ updates: [SessionUpdate]) {
        sinks.withLock { $0.onUpdate }?(updates)
    }
}

/// An idempotency record completed without a session change
/// (`IdempotencyStore.complete`), replicated on its own. (A record written
/// with a delta rides in that delta's `SessionUpdate` instead.)
///
/// Wire form (`encode(into:)`): expiry (i64 ms since 1970), key, fingerprint,
/// status (u32), header count (u32) and each header as a count of strings,
/// body (length-prefixed), TTL (i64 ms) — the record in the same layout as
/// inside a `SessionUpdate`.
public struct ReplicatedRecord: Sendable, Equatable {
    public var record: IdempotencyRecord
    /// When peers forget the record (ms since 1970): the same instant on every node.
    public var expiresAtMillis: Int64

    public init(record: IdempotencyRecord, expiresAtMillis: Int64) {
        self.record = record
        self.expiresAtMillis = expiresAtMillis
    }

    public func encode(into w: inout WireWriter) {
        w.i64(expiresAtMillis)
        record.encode(into: &w)
    }

    /// Reads what `encode(into:)` wrote, with `SessionUpdate`'s limits; does not require the end of input.
    public init(from r: inout WireReader) throws(WireError) {
        let expiresAt = try r.i64()
        self.init(record: try IdempotencyRecord(from: &r), expiresAtMillis: expiresAt)
    }
}
