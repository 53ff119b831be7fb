#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import SessionCore
import Synchronization
import SystemSupport

/// The node-local half of the replicated store (docs/replication.md): every
/// session as a merge-able `ReplicatedSession`, with no networking.
///
/// Every local write hands what peers need to `onUpdate` (sessions) or
/// `onRecord` (idempotency records completed without a delta), outside the
/// lock; peers feed them (through `ReplicationNode`) to the store's merges, in any order,
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
public final class ReplicatedSessionStore: ReadYourWritesStore, IdempotencyStore, PrincipalIndexedStore, SessionEventSource {
    public let expiry: SessionExpiry
    public let clock: SessionClock
    /// Stamps every local change; moved past every merged update.
    package let hlc: HybridLogicalClock
    /// At most this many sessions and tombstones for new local sessions.
    public let maxSessions: Int
    /// At most this many bytes of attribute names and values per session.
    public let maxSessionBytes: Int
    /// The cap on sessions per principal, nil for none (every node must have the same).
    public let principalLimit: PrincipalSessionLimit?
    /// This node's name, kept in a logged-in session's `sessioncluster.node` by its writes.
    public let nodeName: String?
    /// `nodeName` as the attribute's JSON.
    let nodeJSON: [UInt8]?

    /// An idempotency claim or outcome; only completed ones are replicated.
    struct Record: IdempotencyTableValue {
        var fingerprint: String
        /// nil while in progress.
        var response: StoredResponse?
        var expiresAt: Int64
        /// While in progress: when it was claimed (concurrent claims on two nodes: the earlier wins).
        var claimedAt: HLCStamp? = nil
        /// While in progress: when it was claimed here, on the monotonic clock (`lastPauseEnded`).
        var claimedAtNanos: UInt64? = nil
        /// Completed with a session change: that session, sent along to a peer's lookup.
        var session: SessionID? = nil

        var byteCount: Int { fingerprint.utf8.count + (response?.byteCount ?? 0) }

        /// The completed record as peers get it; nil while in progress or once expired.
        func replicated(key: String, now: Int64) -> ReplicatedRecord? {
            guard let response, expiresAt > now else { return nil }
            return ReplicatedRecord(
                record: IdempotencyRecord(
                    key: key, fingerprint: fingerprint, response: response, ttlMillis: expiresAt - now),
                expiresAtMillis: expiresAt)
        }
    }

    struct Contents: Sendable {
        /// Every session and tombstone; written through `self[id]`, which keeps `principals`.
        private(set) var sessions: [SessionID: ReplicatedSession] = [:]
        var records: IdempotencyRecordTable<Record>
        /// A principal's JSON bytes → its sessions that are not invalidated (expired ones
        /// included until swept or read).
        private(set) var principals: [[UInt8]: Set<SessionID>] = [:]
        /// Owner-reported events (expiries, evictions) not yet delivered (`deliverEvents`); only while listened to.
        var owned: [PendingEvent] = []
        /// The handles of evictions this node has seen named by a login, and when (pruned by the sweep).
        var evictionsSeen: [String: Int64] = [:]
        /// The handles of sessions logins named as ended (`ends`), and when (pruned by the sweep).
        var endedHandles: [String: Int64] = [:]
        /// Sessions over their principal's limit that this node owns, since when (`settleOverLimit`).
        var overLimitSince: [SessionID: Int64] = [:]

        /// A session or tombstone; setting it keeps the principal index.
        subscript(id: SessionID) -> ReplicatedSession? {
            get { sessions[id] }
            set {
                let before = sessions[id].flatMap(Self.principalKey)
                sessions[id] = newValue
                let after = newValue.flatMap(Self.principalKey)
                guard before != after else { return }
                if let before {
                    principals[before]?.remove(id)
                    if principals[before]?.isEmpty == true { principals[before] = nil }
                }
                if let after { principals[after, default: []].insert(id) }
            }
        }

        /// The principal a session is indexed under: its principal attribute's JSON, unless invalidated.
        static func principalKey(_ session: ReplicatedSession) -> [UInt8]? {
            session.isInvalidated ? nil : session.attributes[SessionPrincipal.attribute]?.base
        }

        /// Removes every session for which `isRemoved` holds; returns them.
        mutating func removeSessions(where isRemoved: (ReplicatedSession) -> Bool) -> [SessionID: ReplicatedSession] {
            let removed = sessions.filter { isRemoved($0.value) }
            for id in removed.keys { self[id] = nil }
            return removed
        }

        mutating func removeAllSessions() {
            sessions = [:]
            principals = [:]
        }

        /// Keeps a completed record, unless one completed earlier (expiring
        /// first) is kept already: should a request have run twice, every node
        /// ends up replaying the same, first outcome.
        mutating func keep(_ record: IdempotencyRecord, expiresAt: Int64, now: Int64, session: SessionID? = nil) {
            guard expiresAt > now else { return }
            if let mine = records[record.key], mine.response != nil, mine.expiresAt > now, mine.expiresAt <= expiresAt {
                return
            }
            records[record.key] = Record(
                fingerprint: record.fingerprint, response: record.response, expiresAt: expiresAt, session: session)
        }
    }

    struct Sinks {
        var onUpdate: (@Sendable ([SessionUpdate]) -> Bool)?
        var onRecord: (@Sendable (ReplicatedRecord) -> Bool)?
        var onFetch: (@Sendable (SessionID, UInt64) -> Int)?
        var onLookup: (@Sendable (String, UInt64) -> Int)?
        var lastPauseEnded: (@Sendable () -> UInt64?)?
        var liveMembers: (@Sendable () -> [UInt32])?
        var readTokenKey: HMACKey?
        var refusesStaleReads = false
        /// Why the store does not serve, while `isReady` is false.
        var unavailableReason = ReplicatedSessionStore.receivingReason
    }

    /// How `catchUp` waits for a session newer than this node's copy.
    public struct CatchUpPolicy: Sendable {
        /// Wait this long for the change to arrive by itself...
        public var waitMillis: Int64
        /// ...then ask the peers for the session (`onFetch`) and wait this much
        /// longer. Also the longest wait for the peers' answers to a key lookup (`onLookup`).
        public var fetchTimeoutMillis: Int64
        public init(waitMillis: Int64 = 5, fetchTimeoutMillis: Int64 = 100) {
            self.waitMillis = waitMillis
            self.fetchTimeoutMillis = fetchTimeoutMillis
        }
    }

    /// How many `catchUp` calls found the copy current, waited, fetched, or gave up.
    public struct CatchUpCounts: Sendable, Equatable {
        /// Tokens whose MAC did not verify (forged or altered): nothing waited or fetched.
        public var refused = 0
        public var current = 0
        public var waited = 0
        public var fetched = 0
        public var gaveUp = 0
    }

    /// How key lookups (`onLookup`) ended: nobody was asked (no peer needed
    /// asking, or none was connected), no peer knew the key, a peer had
    /// completed it (replayed), a peer held an earlier claim (deferred to it),
    /// or not every peer answered in time (run anyway). `recheckedAfterPause` counts the keyed
    /// changes looked up again before their write because this node was frozen since their
    /// claim (each also counts under its outcome; `replayed` there means not written twice).
    public struct KeyLookupCounts: Sendable, Equatable {
        public var skipped = 0
        public var unknown = 0
        public var replayed = 0
        public var deferred = 0
        public var timedOut = 0
        public var recheckedAfterPause = 0
    }

    public let catchUpPolicy: CatchUpPolicy
    let lookupCounts = FastLock(KeyLookupCounts())
    let contents: FastLock<Contents>
    let sinks = FastLock(Sinks())
    /// Where this store's session events go (set `events.current`).
    public let events: SessionEventHub
    /// Events waiting in `Contents.owned`: `deliverEvents` takes the lock only when there are some.
    let pendingOwned = Atomic<Int>(0)
    let sweeper = RepeatingTimer()
    let ready = Atomic<Bool>(true)
    /// Bumped by every `stopServing`: a write that began in an earlier epoch met a rejoin, and
    /// is refused even when its change was sent (its own state is about to be replaced).
    let servingEpoch = Atomic<UInt64>(0)
    let overwrittenSets = Atomic<Int>(0)

    /// Sets (and removes) that merges resolved against a concurrent one — written on another node
    /// that had not seen it, typically on the other side of a partition: the later one won
    /// everywhere (last writer wins), the other is gone. Counted on each node that merged the pair.
    public var concurrentSetsOverwritten: Int { overwrittenSets.load(ordering: .relaxed) }
    let catchUps = FastLock(CatchUpCounts())  // taken by every request that carries a read token

    /// Who waits in `catchUp`, for which session, and the fetch replies they count.
    struct Waiters {
        var waiting: [SessionID: Int] = [:]
        /// Bumped by every merge of a session someone waits for.
        var merges: UInt64 = 0
        /// Numbers fetches and key lookups alike.
        var nextRequest: UInt64 = 0
        /// Fetches under way, by request number.
        var fetches: [UInt64: Fetch] = [:]
        /// The fetch under way for a session: concurrent catch-ups of it share it.
        var fetching: [SessionID: UInt64] = [:]
        /// Key lookups under way, by request number.
        var lookups: [UInt64: Lookup] = [:]
    }

    /// One fetch of a session from the peers, and the catch-ups waiting for it.
    struct Fetch {
        /// How many peers were asked, once known.
        var asked: Int?
        var replies = 0
        var users = 1
        /// Every peer asked has answered.
        var isAnswered: Bool { asked.map { replies >= $0 } ?? false }
    }

    /// The answers to one key lookup so far.
    struct Lookup {
        /// The asking claim's stamp.
        var claimedAt: HLCStamp
        /// Signalled by every answer: only the asking thread wakes, not every waiter.
        let wake = DispatchSemaphore(value: 0)
        var replies = 0
        /// A peer had completed the key (its record is merged).
        var completed = false
        /// A peer holds an earlier claim of the key.
        var claimedEarlier = false
    }

    let waiters = ConditionLock(Waiters())

    /// A store for node `node` (the HLC's node id, unique in the cluster).
    public init(
        node: UInt32, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        maxSessions: Int = 1_000_000, maxSessionBytes: Int = 64 * 1024, catchUpPolicy: CatchUpPolicy = CatchUpPolicy(),
        idempotencyLimits: IdempotencyLimits = IdempotencyLimits(), principalLimit: PrincipalSessionLimit? = nil,
        nodeName: String? = nil
    ) {
        self.principalLimit = principalLimit
        self.nodeName = nodeName
        nodeJSON = nodeName.map(SessionPrincipal.json)
        events = SessionEventHub(node: nodeName)
        contents = FastLock(Contents(records: IdempotencyRecordTable(limits: idempotencyLimits)))
        self.catchUpPolicy = catchUpPolicy
        self.expiry = expiry
        self.clock = clock
        self.hlc = HybridLogicalClock(node: node, wallClock: clock.nowMillis)
        self.maxSessions = maxSessions
        self.maxSessionBytes = maxSessionBytes
    }

    deinit { stopSweeper() }

    /// The largest response an idempotency record carries; a larger one is
    /// kept as a stand-in (`StoredResponse.capped`: a retry gets 409), so
    /// that every replication frame stays within its 4 MiB limit.
    public static let maxRecordResponseBytes = 1 << 20

    /// The largest `maxSessionBytes` a replicated store may have: a session's
    /// full state must fit one replication frame.
    public static let maxSessionBytesLimit = 1 << 20

    /// The idempotency records held (claims, local and merged records), for metrics.
    public var idempotencyStats: IdempotencyRecordStats { contents.withLock { $0.records.stats } }

    /// Receives the updates of every local write, in order (regenerate: the
    /// new ID's state, then the old ID's tombstone). Called outside the lock.
    /// Returns false when the write was not confirmed as it must be (sync mode
    /// without a majority): the write then fails with `unavailable` and the
    /// store's `unavailableReason` (set by whoever stopped it serving).
    package var onUpdate: (@Sendable ([SessionUpdate]) -> Bool)? {
        get { sinks.withLock { $0.onUpdate } }
        set { sinks.withLock { $0.onUpdate = newValue } }
    }

    /// Receives each record completed by `complete(_:)` (without a delta); returns false like `onUpdate`.
    package var onRecord: (@Sendable (ReplicatedRecord) -> Bool)? {
        get { sinks.withLock { $0.onRecord } }
        set { sinks.withLock { $0.onRecord = newValue } }
    }

    /// Asks the peers for a session's full state, for `catchUp`, with a
    /// request number; returns how many peers were asked. Each reply comes
    /// back through `mergeFetchReply`.
    package var onFetch: (@Sendable (SessionID, UInt64) -> Int)? {
        get { sinks.withLock { $0.onFetch } }
        set { sinks.withLock { $0.onFetch = newValue } }
    }

    /// Asks the live peers what they know of an idempotency key before this
    /// node's claim stands, with a request number; returns how many peers
    /// were asked (0: none needed asking). Each reply comes back through
    /// `mergeLookupReply`. Set by `ReplicationNode` unless its `keyLookups` is `never`.
    package var onLookup: (@Sendable (String, UInt64) -> Int)? {
        get { sinks.withLock { $0.onLookup } }
        set { sinks.withLock { $0.onLookup = newValue } }
    }

    /// When this node last resumed from being frozen (SIGSTOP, a stalled VM), on the monotonic
    /// clock, if that was recently; nil otherwise. A keyed change whose claim is older than that
    /// looks its key up on the peers again before it is written: the client's retry may have run
    /// on one of them meanwhile. Set by `ReplicationNode`.
    package var lastPauseEnded: (@Sendable () -> UInt64?)? {
        get { sinks.withLock { $0.lastPauseEnded } }
        set { sinks.withLock { $0.lastPauseEnded = newValue } }
    }

    /// Merges a peer's answer to fetch `request` (`update` nil: the peer does not have the session).
    package func mergeFetchReply(_ id: SessionID, request: UInt64, _ update: SessionUpdate?) {
        if let update, hlc.observe(update.state.version) { mergeLocked(update) }
        notifyMerged(id, fetchReply: request)
    }

    /// Sessions and tombstones held, expired ones not yet swept included.
    public var count: Int { contents.withLock { $0.sessions.count } }

    /// Whether the store serves requests. A replication node keeps it false
    /// until its state transfer is done: until then every request fails with
    /// `unavailable` (503) instead of seeing sessions that have not arrived.
    public package(set) var isReady: Bool {
        get { ready.load(ordering: .acquiring) }
        set { ready.store(newValue, ordering: .releasing) }
    }

    static let receivingReason = "this node is still receiving the sessions from its peers"

    /// Why the store refuses requests while not ready (what `unavailable` errors and `/healthz` say).
    public var unavailableReason: String { sinks.withLock { $0.unavailableReason } }

    /// Stops serving: every request fails with `unavailable` and `reason` until `isReady` turns true again.
    package func stopServing(reason: String) {
        sinks.withLock { $0.unavailableReason = reason }
        servingEpoch.add(1, ordering: .sequentiallyConsistent)
        isReady = false
    }

    /// Forgets every session, tombstone, claim and record: a rejoining node's
    /// state is replaced by a ready peer's (`ReplicationNode`).
    package func removeAll() {
        contents.withLock { contents in
            contents.removeAllSessions()
            contents.records = IdempotencyRecordTable(limits: contents.records.limits)
        }
    }

    /// Throws while not serving; otherwise returns the serving epoch, for `emit(_:servedSince:)`.
    @discardableResult
    func checkReady() throws(SessionStoreError) -> UInt64 {
        let epoch = servingEpoch.load(ordering: .sequentiallyConsistent)
        guard isReady else { throw notServing() }
        return epoch
    }

    func notServing() -> SessionStoreError { SessionStoreError(.unavailable, unavailableReason) }

    // MARK: SessionStore

    public func load(_ id: SessionID) throws -> SessionSnapshot? {
        try checkReady()
        let now = clock.nowMillis()
        let (snapshot, touch) = contents.withLock { contents -> (SessionSnapshot?, SessionUpdate?) in
            guard var session = live(&contents, id, now: now) else { return (nil, nil) }
            var touch: SessionUpdate?
            if now - session.lastAccessMillis >= expiry.touchIntervalMillis {
                session.touch(nowMillis: now)
                contents[id] = session
                touch = SessionUpdate(id: id, session: session, attributes: [:], origin: hlc.node)
            }
            return (session.snapshot(id: id), touch)
        }
        if let touch { emit([touch]) }
        deliverEvents()
        return snapshot
    }

    /// Also returns nil for an invalidated ID, even with `createIfMissing`:
    /// a tombstoned ID is never reused.
    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        try delta.checkPrincipalUntouched()
        let epoch = try checkReady()
        var delta = delta
        if let record = delta.idempotencyRecord {
            delta.idempotencyRecord?.response = record.response.capped(maxBytes: Self.maxRecordResponseBytes)
        }
        if let record = delta.idempotencyRecord { recheckAfterPause(record) }
        let now = clock.nowMillis()
        let result = try contents.withLock { contents throws(SessionStoreError) -> (AppliedDelta, SessionUpdate)? in
            if let key = delta.idempotencyRecord?.key, let record = contents.records[key], record.expiresAt > now,
                record.response != nil
            {
                throw .idempotencyKeyCompleted(key)
            }
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
            if let nodeJSON, let node = Self.nodeChange(session, nodeJSON) { delta.changes.append(node) }
            let (update, counters) = try session.apply(delta, clock: hlc, nowMillis: now)
            let bytes = Self.byteCount(session)
            guard bytes <= maxSessionBytes else {
                throw SessionStoreError(
                    .sessionTooLarge, "session would hold \(bytes) bytes, the cap is \(maxSessionBytes)")
            }
            contents[delta.id] = session
            if let record = delta.idempotencyRecord {
                contents.keep(record, expiresAt: now + record.ttlMillis, now: now, session: delta.id)
            }
            return (AppliedDelta(version: session.version.packedVersion, counters: counters, created: created), update)
        }
        guard let (applied, update) = result else {
            deliverEvents()
            return nil
        }
        guard emit([update], servedSince: epoch) else { throw notServing() }
        deliverEvents(applied.created ? [PendingEvent(kind: .created, id: delta.id)] : [])
        return applied
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        let epoch = try checkReady()
        let now = clock.nowMillis()
        let updates = contents.withLock { contents -> [SessionUpdate]? in
            guard var session = live(&contents, id, now: now) else { return nil }
            session.touch(nowMillis: now)  // the tombstone lives an idle timeout from now
            let (moved, updates) = session.regenerate(from: id, to: newID, at: hlc.now(), nowMillis: now)
            contents[id] = session
            contents[newID] = moved
            return updates
        }
        guard let updates else {
            deliverEvents()
            return false
        }
        guard emit(updates, servedSince: epoch) else { throw notServing() }
        let principal = updates.first.flatMap { Self.principal(of: $0.state) }
        deliverEvents([PendingEvent(kind: .regenerated, id: newID, previous: id, principal: principal)])
        return true
    }

    public func invalidate(_ id: SessionID) throws {
        let epoch = try checkReady()
        let now = clock.nowMillis()
        var principal: String?
        let update = contents.withLock { contents -> SessionUpdate? in
            guard var session = live(&contents, id, now: now) else { return nil }
            principal = Self.principal(of: session)
            session.touch(nowMillis: now)  // the tombstone lives an idle timeout from now
            session.invalidate(at: hlc.now())
            contents[id] = session
            return SessionUpdate(id: id, session: session)
        }
        if let update, !emit([update], servedSince: epoch) { throw notServing() }
        deliverEvents(update == nil ? [] : [PendingEvent(kind: .invalidated, id: id, principal: principal)])
    }

    // MARK: Expiry

    /// Removes expired sessions, tombstones and idempotency records; returns how many sessions and tombstones.
    @discardableResult
    public func sweep() -> Int {
        let now = clock.nowMillis()
        defer { settleOverLimit(now: now) }
        return contents.withLock { removeExpired(&$0, now: now) }
    }

    /// Sweeps every `intervalMillis` on a background timer until
    /// `stopSweeper()` or the store is released.
    public func startSweeper(intervalMillis: Int = 60_000) {
        sweeper.start(label: "replicated-session-sweeper", intervalMillis: intervalMillis) { [weak self] in self?.sweep() }
    }

    public func stopSweeper() { sweeper.stop() }

    // MARK: Helpers

    func isExpired(_ session: ReplicatedSession, now: Int64) -> Bool {
        expiry.isExpired(createdAt: session.createdAtMillis, lastAccess: session.lastAccessMillis, now: now)
    }

    /// The live session at `id`, or nil when unknown, invalidated or expired (then removed).
    /// A session of a principal over its limit that is not among its newest logins counts as gone
    /// too (`isOverLimit`).
    func live(_ contents: inout Contents, _ id: SessionID, now: Int64) -> ReplicatedSession? {
        guard let session = contents.sessions[id] else { return nil }
        if isExpired(session, now: now) {
            contents[id] = nil
            recordExpiry(of: id, session, in: &contents)
            return nil
        }
        if session.isInvalidated || isOverLimit(session, contents, now: now) { return nil }
        return session
    }

    /// Throws `capacityExceeded` when no session can be added, even after removing expired ones.
    func makeRoom(_ contents: inout Contents, now: Int64) throws(SessionStoreError) {
        guard contents.sessions.count >= maxSessions else { return }
        removeExpired(&contents, now: now)
        guard contents.sessions.count < maxSessions else {
            throw SessionStoreError(.capacityExceeded, "the store holds \(maxSessions) sessions")
        }
    }

    @discardableResult
    func removeExpired(_ contents: inout Contents, now: Int64) -> Int {
        let removed = contents.removeSessions { isExpired($0, now: now) }
        for (id, session) in removed { recordExpiry(of: id, session, in: &contents) }
        contents.evictionsSeen = contents.evictionsSeen.filter { now - $0.value < expiry.idleTimeoutMillis }
        contents.endedHandles = contents.endedHandles.filter { now - $0.value < expiry.idleTimeoutMillis }
        contents.records.removeExpired(now: now)
        return removed.count
    }

    /// Attribute names and values, as `MemorySessionStore` counts them.
    static func byteCount(_ session: ReplicatedSession) -> Int {
        session.attributes.reduce(0) { total, attribute in
            guard let value = attribute.value.value else { return total }
            return total + attribute.key.utf8.count + value.count
        }
    }

    /// Hands the updates to `onUpdate`; false when they were not confirmed.
    @discardableResult
    func emit(_ updates: [SessionUpdate]) -> Bool {
        sinks.withLock { $0.onUpdate }?(updates) ?? true
    }

    /// Sends a local write's updates; whether it may be answered: the peers took it (`onUpdate`)
    /// and this node served throughout — no rejoin began since `epoch` (its state is dropped for
    /// its peers'; in async mode its links may have had no connection to send on).
    func emit(_ updates: [SessionUpdate], servedSince epoch: UInt64) -> Bool {
        emit(updates) && servingEpoch.load(ordering: .sequentiallyConsistent) == epoch
    }
}
