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

    struct Contents {
        var sessions: [SessionID: ReplicatedSession] = [:]
        var records: IdempotencyRecordTable<Record>

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
    private let lookupCounts = FastLock(KeyLookupCounts())
    private let contents: FastLock<Contents>
    private let sinks = FastLock(Sinks())
    private let sweeper = RepeatingTimer()
    private let ready = Atomic<Bool>(true)
    /// Bumped by every `stopServing`: a write that began in an earlier epoch met a rejoin, and
    /// is refused even when its change was sent (its own state is about to be replaced).
    private let servingEpoch = Atomic<UInt64>(0)
    private let overwrittenSets = Atomic<Int>(0)

    /// Sets (and removes) that merges resolved against a concurrent one — written on another node
    /// that had not seen it, typically on the other side of a partition: the later one won
    /// everywhere (last writer wins), the other is gone. Counted on each node that merged the pair.
    public var concurrentSetsOverwritten: Int { overwrittenSets.load(ordering: .relaxed) }
    private let catchUps = FastLock(CatchUpCounts())  // taken by every request that carries a read token

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

    private let waiters = ConditionLock(Waiters())

    /// A store for node `node` (the HLC's node id, unique in the cluster).
    public init(
        node: UInt32, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        maxSessions: Int = 1_000_000, maxSessionBytes: Int = 64 * 1024, catchUpPolicy: CatchUpPolicy = CatchUpPolicy(),
        idempotencyLimits: IdempotencyLimits = IdempotencyLimits()
    ) {
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
    public var onUpdate: (@Sendable ([SessionUpdate]) -> Bool)? {
        get { sinks.withLock { $0.onUpdate } }
        set { sinks.withLock { $0.onUpdate = newValue } }
    }

    /// Receives each record completed by `complete(_:)` (without a delta); returns false like `onUpdate`.
    public var onRecord: (@Sendable (ReplicatedRecord) -> Bool)? {
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

    /// Asks the live peers what they know of an idempotency key before this
    /// node's claim stands, with a request number; returns how many peers
    /// were asked (0: none needed asking). Each reply comes back through
    /// `mergeLookupReply`. Set by `ReplicationNode` unless its `keyLookups` is `never`.
    public var onLookup: (@Sendable (String, UInt64) -> Int)? {
        get { sinks.withLock { $0.onLookup } }
        set { sinks.withLock { $0.onLookup = newValue } }
    }

    /// When this node last resumed from being frozen (SIGSTOP, a stalled VM), on the monotonic
    /// clock, if that was recently; nil otherwise. A keyed change whose claim is older than that
    /// looks its key up on the peers again before it is written: the client's retry may have run
    /// on one of them meanwhile. Set by `ReplicationNode`.
    public var lastPauseEnded: (@Sendable () -> UInt64?)? {
        get { sinks.withLock { $0.lastPauseEnded } }
        set { sinks.withLock { $0.lastPauseEnded = newValue } }
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

    static let receivingReason = "this node is still receiving the sessions from its peers"

    /// Why the store refuses requests while not ready (what `unavailable` errors and `/healthz` say).
    public var unavailableReason: String { sinks.withLock { $0.unavailableReason } }

    /// Stops serving: every request fails with `unavailable` and `reason` until `isReady` turns true again.
    public func stopServing(reason: String) {
        sinks.withLock { $0.unavailableReason = reason }
        servingEpoch.add(1, ordering: .sequentiallyConsistent)
        isReady = false
    }

    /// Forgets every session, tombstone, claim and record: a rejoining node's
    /// state is replaced by a ready peer's (`ReplicationNode`).
    public func removeAll() {
        contents.withLock { contents in
            contents.sessions = [:]
            contents.records = IdempotencyRecordTable(limits: contents.records.limits)
        }
    }

    /// Throws while not serving; otherwise returns the serving epoch, for `emit(_:servedSince:)`.
    @discardableResult
    private func checkReady() throws(SessionStoreError) -> UInt64 {
        let epoch = servingEpoch.load(ordering: .sequentiallyConsistent)
        guard isReady else { throw notServing() }
        return epoch
    }

    private func notServing() -> SessionStoreError { SessionStoreError(.unavailable, unavailableReason) }

    // MARK: Read-your-writes

    /// The key of read tokens' MACs. `ReplicationNode` sets it from the
    /// cluster secret; with it, a token is valid only for its session and
    /// only as this cluster issued it, so a forged one costs no wait and no
    /// fetch. nil: tokens carry no MAC (a store without peers fetches nothing).
    var readTokenKey: HMACKey? {
        get { sinks.withLock { $0.readTokenKey } }
        set { sinks.withLock { $0.readTokenKey = newValue } }
    }

    /// The session's `seen` vector on this node (a `ReadToken`), with its MAC
    /// (`~` and 22 characters) when the store has a `readTokenKey`.
    public func readToken(for id: SessionID) -> String? {
        guard let token = contents.withLock({ $0.sessions[id]?.seen }).map({ ReadToken($0).description }) else {
            return nil
        }
        guard let key = readTokenKey else { return token }
        return token + "~" + base64URLEncode(Array(key.authenticationCode(for: Self.tokenMessage(token, id: id)).prefix(16)))
    }

    /// What a read token's MAC covers: the session ID and the token.
    private static func tokenMessage<Token: StringProtocol>(_ token: Token, id: SessionID) -> [UInt8] {
        Array("\(id.rawValue)\n\(token)".utf8)
    }

    /// A read-token cookie's token text and MAC (no MAC without a key; nil when malformed).
    private static func splitToken(_ value: String, key: HMACKey?) -> (token: Substring, mac: [UInt8]?)? {
        guard key != nil else { return (value[...], nil) }
        guard let tilde = value.lastIndex(of: "~"), let mac = base64URLDecode(String(value[value.index(after: tilde)...])),
            mac.count == 16
        else { return nil }
        return (value[..<tilde], mac)
    }

    /// Waits for a copy holding every write `token` names: up to
    /// `catchUpPolicy.waitMillis` for the changes to arrive, then asks the
    /// peers (`onFetch`) and waits up to `fetchTimeoutMillis` more, or until
    /// every peer asked has answered. Woken by merges of this session, not
    /// by polling. Concurrent catch-ups of one session share one fetch.
    /// Tokens whose MAC does not verify, malformed tokens and tokens from the
    /// future (beyond the clock's drift limit) are refused at once.
    /// Whether a catch-up that gives up throws `unavailable` instead of letting the request see
    /// an older state than its client saw (`ReplicationNode` sets it in sync mode with a majority quorum: CP).
    public var refusesStaleReads: Bool {
        get { sinks.withLock { $0.refusesStaleReads } }
        set { sinks.withLock { $0.refusesStaleReads = newValue } }
    }

    public func catchUp(_ id: SessionID, to token: String) throws -> Bool {
        let key = readTokenKey
        guard let (text, mac) = Self.splitToken(token, key: key), let wanted = ReadToken(String(text)) else {
            catchUps.withLock { $0.refused += 1 }
            return false
        }
        let limit = clock.nowMillis() + hlc.maxForwardDriftMillis
        guard wanted.stamps.allSatisfy({ $0.millis <= limit }) else { return false }
        func isCurrent() -> Bool { contents.withLock { $0.sessions[id]?.contains(wanted) ?? false } }
        if isCurrent() {  // nothing to wait for: the MAC guards only the waits and fetches below
            catchUps.withLock { $0.current += 1 }
            return true
        }
        if let mac, let key, !key.isValid(mac, for: Self.tokenMessage(text, id: id)) {
            catchUps.withLock { $0.refused += 1 }
            return false
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
        // Ask the peers, or join the fetch of this session already under way; stop early once
        // every peer asked answered without the changes.
        let (request, leads) = waiters.withLock { w -> (UInt64, Bool) in
            if let running = w.fetching[id], w.fetches[running]?.isAnswered == false {
                w.fetches[running]?.users += 1
                return (running, false)
            }
            w.nextRequest += 1
            w.fetches[w.nextRequest] = Fetch()
            w.fetching[id] = w.nextRequest
            return (w.nextRequest, true)
        }
        defer {
            waiters.withLock { w in
                w.fetches[request]?.users -= 1
                guard w.fetches[request]?.users == 0 else { return }
                w.fetches[request] = nil
                if w.fetching[id] == request { w.fetching[id] = nil }
            }
        }
        if leads {
            let asked = sinks.withLock { $0.onFetch }?(id, request) ?? 0
            waiters.withLock { $0.fetches[request]?.asked = asked }
            notifyMerged(id)  // wakes the catch-ups that joined, should nobody have been asked
        }
        let fetched =
            waitForMerge(of: id, millis: catchUpPolicy.fetchTimeoutMillis) {
                isCurrent() || waiters.withLock { $0.fetches[request]?.isAnswered ?? false }
            } && isCurrent()
        catchUps.withLock { fetched ? ($0.fetched += 1) : ($0.gaveUp += 1) }
        // Every peer asked answered without it: the session is gone everywhere (expired, invalidated),
        // not out of reach. Refuse only when some did not answer, or none could be asked.
        let unanswered = waiters.withLock { w in
            guard let fetch = w.fetches[request] else { return true }
            return !fetch.isAnswered || fetch.asked == 0
        }
        if !fetched && refusesStaleReads && unanswered {
            throw SessionStoreError(
                .unavailable,
                "this node does not have the session as the client last saw it, and no peer sent it within \(catchUpPolicy.fetchTimeoutMillis) ms")
        }
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
            if let request { w.fetches[request]?.replies += 1 }
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
            let (update, counters) = try session.apply(delta, clock: hlc, nowMillis: now)
            let bytes = Self.byteCount(session)
            guard bytes <= maxSessionBytes else {
                throw SessionStoreError(
                    .sessionTooLarge, "session would hold \(bytes) bytes, the cap is \(maxSessionBytes)")
            }
            contents.sessions[delta.id] = session
            if let record = delta.idempotencyRecord {
                contents.keep(record, expiresAt: now + record.ttlMillis, now: now, session: delta.id)
            }
            return (AppliedDelta(version: session.version.packedVersion, counters: counters, created: created), update)
        }
        guard let (applied, update) = result else { return nil }
        guard emit([update], servedSince: epoch) else { throw notServing() }
        return applied
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        let epoch = try checkReady()
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
        guard emit(updates, servedSince: epoch) else { throw notServing() }
        return true
    }

    public func invalidate(_ id: SessionID) throws {
        let epoch = try checkReady()
        let now = clock.nowMillis()
        let update = contents.withLock { contents -> SessionUpdate? in
            guard var session = live(&contents, id, now: now) else { return nil }
            session.touch(nowMillis: now)  // the tombstone lives an idle timeout from now
            session.invalidate(at: hlc.now())
            contents.sessions[id] = session
            return SessionUpdate(id: id, session: session)
        }
        if let update, !emit([update], servedSince: epoch) { throw notServing() }
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
                let overwritten = session.merge(update.state)
                if overwritten > 0 { overwrittenSets.add(overwritten, ordering: .relaxed) }
                contents.sessions[update.id] = session
            } else if !isExpired(update.state, now: now) {
                contents.sessions[update.id] = update.state
            }
            if let record = update.idempotencyRecord {
                // The write that carried the record refreshed lastAccess to its time.
                contents.keep(
                    record, expiresAt: update.state.lastAccessMillis + record.ttlMillis, now: now, session: update.id)
            }
        }
    }

    /// Merges an idempotency record from a peer (kept unless already expired).
    public func merge(record: ReplicatedRecord) { merge(record: record, session: nil) }

    private func merge(record: ReplicatedRecord, session: SessionID?) {
        let now = clock.nowMillis()
        contents.withLock { $0.keep(record.record, expiresAt: record.expiresAtMillis, now: now, session: session) }
    }

    /// The completed record of `key`, if any (what a relay passes on).
    func completedRecord(key: String) -> ReplicatedRecord? {
        let now = clock.nowMillis()
        return contents.withLock { $0.records[key]?.replicated(key: key, now: now) }
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
            contents.records.all.compactMap { key, record in record.replicated(key: key, now: now) }
        }
    }

    // MARK: IdempotencyStore (claims are local; completed records replicate)

    /// With `onLookup` set, a key this node does not know is
    /// claimed here, then looked up on the live peers before the claim
    /// stands: a request whose node died after its change reached some peers
    /// but before it answered is replayed from their record (and the
    /// session's state merged here), not run twice.
    ///
    /// A replayed record's session is sent to the peers again (in sync mode:
    /// acknowledged) before the replay is answered: the node that ran the
    /// request may have died with its change on only some nodes, and the
    /// client, taking the replay as confirmation, may read from any of them.
    public func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim {
        try checkReady()
        let now = clock.nowMillis()
        let claimedAt = hlc.now()
        let (claim, session) = contents.withLock { contents -> (IdempotencyClaim, SessionID?) in
            if let record = contents.records[key], record.expiresAt > now {
                guard record.fingerprint == fingerprint else { return (.mismatch, nil) }
                return (record.response.map { .completed($0) } ?? .inProgress, record.session)
            }
            contents.records[key] = Record(
                fingerprint: fingerprint, response: nil, expiresAt: now + inProgressMillis, claimedAt: claimedAt,
                claimedAtNanos: monotonicNanos())
            return (.claimed, nil)
        }
        if case .completed = claim {
            spreadReplayed(session)
            return claim
        }
        guard claim == .claimed, let ask = sinks.withLock({ $0.onLookup }) else { return claim }
        return lookUpOnPeers(key: key, fingerprint: fingerprint, claimedAt: claimedAt, ask: ask)
    }

    /// Before a keyed change is written: if this node was frozen since the key was claimed here,
    /// asks the peers about the key again (every connected one, see `ReplicationNode`). A peer's
    /// completed record is merged, and `apply` then refuses the change (`idempotencyKeyCompleted`):
    /// the middleware answers with that record instead of counting the request twice.
    /// Without a recent pause it costs one uncontended lock (the detector's), not the store's.
    private func recheckAfterPause(_ record: IdempotencyRecord) {
        let (lastPauseEnded, ask) = sinks.withLock { ($0.lastPauseEnded, $0.onLookup) }
        guard let ask, let resumedAt = lastPauseEnded?() else { return }
        let claimedAt = contents.withLock { contents -> HLCStamp? in
            guard let local = contents.records[record.key], local.response == nil,
                let nanos = local.claimedAtNanos, nanos < resumedAt
            else { return nil }
            return local.claimedAt
        }
        guard let claimedAt else { return }
        lookupCounts.withLock { $0.recheckedAfterPause += 1 }
        _ = lookUpOnPeers(
            key: record.key, fingerprint: record.fingerprint, claimedAt: claimedAt, ask: ask, yieldsToEarlierClaims: false)
    }

    /// Sends the full state of a replayed record's session to the peers.
    private func spreadReplayed(_ session: SessionID?) {
        if let session, let state = fullState(of: session) { emit([state]) }
    }

    /// Asks the peers about a key just claimed here and waits for every
    /// answer (at most `fetchTimeoutMillis`), or for one that decides.
    /// With `yieldsToEarlierClaims` false (a recheck of a claim already running), a peer's
    /// earlier claim does not withdraw this one.
    private func lookUpOnPeers(
        key: String, fingerprint: String, claimedAt: HLCStamp, ask: (String, UInt64) -> Int,
        yieldsToEarlierClaims: Bool = true
    ) -> IdempotencyClaim {
        let lookup = Lookup(claimedAt: claimedAt)
        let request = waiters.withLock { w -> UInt64 in
            w.nextRequest += 1
            w.lookups[w.nextRequest] = lookup
            return w.nextRequest
        }
        defer { waiters.withLock { _ = $0.lookups.removeValue(forKey: request) } }
        let asked = ask(key, request)
        guard asked > 0 else {
            lookupCounts.withLock { $0.skipped += 1 }
            return .claimed
        }
        let deadline = DispatchTime.now() + .milliseconds(Int(clamping: max(0, catchUpPolicy.fetchTimeoutMillis)))
        var answers = lookup
        while true {
            answers = waiters.withLock { $0.lookups[request] } ?? answers
            if answers.replies >= asked || answers.completed || answers.claimedEarlier { break }
            if lookup.wake.wait(timeout: deadline) == .timedOut {
                answers = waiters.withLock { $0.lookups[request] } ?? answers
                break
            }
        }
        let now = clock.nowMillis()
        var replayedSession: SessionID?
        let (claim, outcome) = contents.withLock { contents -> (IdempotencyClaim, WritableKeyPath<KeyLookupCounts, Int>) in
            let timedOut = answers.replies < asked
            guard let record = contents.records[key], record.expiresAt > now else {
                return (.claimed, timedOut ? \.timedOut : \.unknown)
            }
            if let response = record.response {
                // A peer's record, merged by mergeLookupReply.
                replayedSession = record.session
                return (record.fingerprint == fingerprint ? .completed(response) : .mismatch, \.replayed)
            }
            if yieldsToEarlierClaims && answers.claimedEarlier && record.claimedAt == claimedAt {
                contents.records[key] = nil  // the earlier claim runs; this request waits for its record
                return (.inProgress, \.deferred)
            }
            return (.claimed, timedOut ? \.timedOut : \.unknown)
        }
        lookupCounts.withLock { $0[keyPath: outcome] += 1 }
        if case .completed = claim { spreadReplayed(replayedSession) }
        return claim
    }

    /// How the key lookups so far ended.
    public var keyLookupCounts: KeyLookupCounts { lookupCounts.withLock { $0 } }

    /// What this node knows of an idempotency key, for a peer's lookup.
    public func lookUp(key: String) -> KeyLookupReply.Answer {
        let now = clock.nowMillis()
        return contents.withLock { contents in
            guard let record = contents.records[key], record.expiresAt > now else { return .unknown }
            guard let completed = record.replicated(key: key, now: now) else {
                return record.claimedAt.map { .inProgress(claimedAt: $0) } ?? .unknown
            }
            let session = record.session.flatMap { id in
                contents.sessions[id].flatMap { isExpired($0, now: now) ? nil : SessionUpdate(id: id, session: $0) }
            }
            return .completed(completed, session: session)
        }
    }

    /// Merges a peer's answer to key lookup `request`: a completed record and
    /// its session's state go into the store.
    public func mergeLookupReply(_ reply: KeyLookupReply) {
        var completed = false
        var claimedAt: HLCStamp?
        switch reply.answer {
        case .unknown:
            break
        case .inProgress(let stamp):
            claimedAt = stamp
        case .completed(let record, let session):
            if let session { merge(session) }
            merge(record: record, session: session?.id)
            completed = true
        }
        let wake = waiters.withLock { w -> DispatchSemaphore? in
            guard var lookup = w.lookups[reply.request] else { return nil }
            lookup.replies += 1
            if completed { lookup.completed = true }
            if let claimedAt, claimedAt < lookup.claimedAt { lookup.claimedEarlier = true }
            w.lookups[reply.request] = lookup
            return lookup.wake
        }
        wake?.signal()
    }

    public func complete(_ record: IdempotencyRecord) throws {
        var record = record
        record.response = record.response.capped(maxBytes: Self.maxRecordResponseBytes)
        let now = clock.nowMillis()
        let replicated = ReplicatedRecord(record: record, expiresAtMillis: now + record.ttlMillis)
        let kept = contents.withLock { contents -> Bool in
            if let kept = contents.records[record.key], kept.expiresAt > now, kept.response != nil { return false }
            contents.records[record.key] = Record(
                fingerprint: record.fingerprint, response: record.response, expiresAt: replicated.expiresAtMillis)
            return true
        }
        if kept, sinks.withLock({ $0.onRecord })?(replicated) == false { throw notServing() }
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
        contents.records.removeExpired(now: now)
        return before - contents.sessions.count
    }

    /// Attribute names and values, as `MemorySessionStore` counts them.
    private static func byteCount(_ session: ReplicatedSession) -> Int {
        session.attributes.reduce(0) { total, attribute in
            guard let value = attribute.value.value else { return total }
            return total + attribute.key.utf8.count + value.count
        }
    }

    /// Hands the updates to `onUpdate`; false when they were not confirmed.
    @discardableResult
    private func emit(_ updates: [SessionUpdate]) -> Bool {
        sinks.withLock { $0.onUpdate }?(updates) ?? true
    }

    /// Sends a local write's updates; whether it may be answered: the peers took it (`onUpdate`)
    /// and this node served throughout — no rejoin began since `epoch` (its state is dropped for
    /// its peers'; in async mode its links may have had no connection to send on).
    private func emit(_ updates: [SessionUpdate], servedSince epoch: UInt64) -> Bool {
        emit(updates) && servingEpoch.load(ordering: .sequentiallyConsistent) == epoch
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
