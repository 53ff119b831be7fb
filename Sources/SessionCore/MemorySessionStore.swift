#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Synchronization
import SystemSupport

/// Sessions in this process's memory: the store of a single node, and the
/// building block of the replicated store.
///
/// Expiry is checked on every read; `sweep()` (or the sweeper thread started
/// by `startSweeper`) removes expired sessions nobody reads any more.
public final class MemorySessionStore: SessionStore, IdempotencyStore, PrincipalIndexedStore, SessionEventSource {
    public let expiry: SessionExpiry
    public let clock: SessionClock
    /// At most this many sessions; creating one more fails with `capacityExceeded`.
    public let maxSessions: Int
    /// At most this many bytes of attribute names and values per session.
    public let maxSessionBytes: Int
    /// The cap on sessions per principal, nil for none.
    public let principalLimit: PrincipalSessionLimit?
    /// The node named in listings of a principal's sessions (`PrincipalSessionEntry.node`).
    public let nodeName: String?

    struct Entry {
        var attributes: [String: [UInt8]]
        var createdAt: Int64
        var lastAccess: Int64
        var version: UInt64
        var bytes: Int
        /// The logged-in principal (also in `attributes`), indexed in `Contents.principals`.
        var principal: String? = nil

        /// Counts the attribute names and values (`bytes`).
        mutating func recount() { bytes = attributes.reduce(0) { $0 + $1.key.utf8.count + $1.value.count } }
    }

    enum RecordState {
        case inProgress(fingerprint: String)
        case completed(fingerprint: String, response: StoredResponse)
    }

    struct Record: IdempotencyTableValue {
        var state: RecordState
        var expiresAt: Int64

        var byteCount: Int {
            switch state {
            case .inProgress(let fingerprint): fingerprint.utf8.count
            case .completed(let fingerprint, let response): fingerprint.utf8.count + response.byteCount
            }
        }
    }

    struct Contents {
        var sessions: [SessionID: Entry] = [:]
        var records: IdempotencyRecordTable<Record>
        /// Principal → the IDs of its sessions.
        var principals: [String: Set<SessionID>] = [:]
        /// Events of the current locked step, delivered once the lock is released.
        var events: [PendingEvent] = []

        /// Removes an expired session; a logged-in one's `expired` event follows.
        mutating func expire(_ id: SessionID) {
            if let principal = remove(id)?.principal { events.append(PendingEvent(kind: .expired, id: id, principal: principal)) }
        }

        /// Removes a session and its index entry; returns it.
        @discardableResult
        mutating func remove(_ id: SessionID) -> Entry? {
            guard let entry = sessions.removeValue(forKey: id) else { return nil }
            if let principal = entry.principal {
                principals[principal]?.remove(id)
                if principals[principal]?.isEmpty == true { principals[principal] = nil }
            }
            return entry
        }

        /// Stores a session under `id` and indexes it.
        mutating func insert(_ entry: Entry, as id: SessionID) {
            sessions[id] = entry
            if let principal = entry.principal { principals[principal, default: []].insert(id) }
        }
    }

    private let contents: Mutex<Contents>
    private let sweeper = RepeatingTimer()
    /// Where this store's session events go (set `events.current`).
    public let events: SessionEventHub

    public init(
        expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system, maxSessions: Int = 1_000_000,
        maxSessionBytes: Int = 64 * 1024, idempotencyLimits: IdempotencyLimits = IdempotencyLimits(),
        principalLimit: PrincipalSessionLimit? = nil, nodeName: String? = nil
    ) {
        self.expiry = expiry
        self.clock = clock
        self.maxSessions = maxSessions
        self.maxSessionBytes = maxSessionBytes
        self.principalLimit = principalLimit
        self.nodeName = nodeName
        events = SessionEventHub(node: nodeName)
        contents = Mutex(Contents(records: IdempotencyRecordTable(limits: idempotencyLimits)))
    }

    /// The idempotency records held, for metrics.
    public var idempotencyStats: IdempotencyRecordStats { contents.withLock { $0.records.stats } }

    deinit { stopSweeper() }

    /// The number of sessions held, expired ones not yet swept included.
    public var count: Int { contents.withLock { $0.sessions.count } }

    /// Runs `body` under the lock, then delivers the events it recorded.
    private func locked<T>(_ body: (inout Contents) throws -> T) rethrows -> T {
        var events: [PendingEvent] = []
        defer { deliver(events) }
        return try contents.withLock { contents in
            defer {
                events = contents.events
                contents.events = []
            }
            return try body(&contents)
        }
    }

    private func deliver(_ pending: [PendingEvent]) {
        if !pending.isEmpty { events.emit(pending, atMillis: clock.nowMillis()) }
    }

    public func load(_ id: SessionID) throws -> SessionSnapshot? {
        let now = clock.nowMillis()
        return locked { contents -> SessionSnapshot? in
            guard var entry = contents.sessions[id] else { return nil }
            if expiry.isExpired(createdAt: entry.createdAt, lastAccess: entry.lastAccess, now: now) {
                contents.expire(id)
                return nil
            }
            if now - entry.lastAccess >= expiry.touchIntervalMillis {
                entry.lastAccess = now
                contents.sessions[id] = entry
            }
            return SessionSnapshot(
                id: id, attributes: entry.attributes, createdAtMillis: entry.createdAt,
                lastAccessedAtMillis: entry.lastAccess, version: entry.version)
        }
    }

    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        try delta.checkPrincipalUntouched()
        let now = clock.nowMillis()
        return try locked { contents throws(SessionStoreError) -> AppliedDelta? in
            if let key = delta.idempotencyRecord?.key, let record = contents.records[key], record.expiresAt > now,
                case .completed = record.state
            {
                throw .idempotencyKeyCompleted(key)
            }
            var created = false
            var entry: Entry
            if let existing = contents.sessions[delta.id],
                !expiry.isExpired(createdAt: existing.createdAt, lastAccess: existing.lastAccess, now: now)
            {
                entry = existing
            } else {
                contents.expire(delta.id)
                guard delta.createIfMissing else { return nil }
                try makeRoom(&contents, now: now)
                entry = Entry(attributes: [:], createdAt: now, lastAccess: now, version: 0, bytes: 0)
                created = true
            }
            // Work on a copy: all or nothing.
            var counters: [String: Int64] = [:]
            for change in delta.changes {
                switch change {
                case .set(let name, let value):
                    entry.attributes[name] = value
                case .remove(let name):
                    entry.attributes[name] = nil
                case .increment(let name, let by):
                    let sum = try incrementedCounter(entry.attributes[name], by: by, attribute: name)
                    entry.attributes[name] = encodeCounter(sum)
                    counters[name] = sum
                }
            }
            entry.recount()
            if entry.bytes > maxSessionBytes {
                throw SessionStoreError(
                    .sessionTooLarge, "session would hold \(entry.bytes) bytes, the cap is \(maxSessionBytes)")
            }
            entry.version += 1
            entry.lastAccess = now
            contents.sessions[delta.id] = entry
            if created { contents.events.append(PendingEvent(kind: .created, id: delta.id)) }
            if let record = delta.idempotencyRecord {
                contents.records.set(
                    record.key,
                    Record(
                        state: .completed(fingerprint: record.fingerprint, response: record.response),
                        expiresAt: now + record.ttlMillis))
            }
            return AppliedDelta(version: entry.version, counters: counters, created: created)
        }
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        let now = clock.nowMillis()
        return locked { contents in
            guard let existing = contents.sessions[id] else { return false }
            if expiry.isExpired(createdAt: existing.createdAt, lastAccess: existing.lastAccess, now: now) {
                contents.expire(id)
                return false
            }
            guard var entry = contents.remove(id) else { return false }
            entry.lastAccess = now
            entry.version += 1
            contents.insert(entry, as: newID)
            contents.events.append(PendingEvent(kind: .regenerated, id: newID, previous: id, principal: entry.principal))
            return true
        }
    }

    public func invalidate(_ id: SessionID) throws {
        locked { contents in
            if let entry = contents.remove(id) {
                contents.events.append(PendingEvent(kind: .invalidated, id: id, principal: entry.principal))
            }
        }
    }

    /// Removes expired sessions and idempotency records; returns how many sessions.
    @discardableResult
    public func sweep() -> Int {
        let now = clock.nowMillis()
        return locked { removeExpired(&$0, now: now) }
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
        let expired = contents.sessions.filter {
            expiry.isExpired(createdAt: $0.value.createdAt, lastAccess: $0.value.lastAccess, now: now)
        }
        for id in expired.keys { contents.expire(id) }
        contents.records.removeExpired(now: now)
        return expired.count
    }

    // MARK: PrincipalIndexedStore

    public func changePrincipal(_ change: PrincipalChange) throws -> PrincipalChangeResult {
        if let principal = change.principal { try SessionPrincipal.validate(principal) }
        let now = clock.nowMillis()
        return try locked { contents throws(SessionStoreError) -> PrincipalChangeResult in
            var entry: Entry
            if let id = change.id, let existing = contents.sessions[id],
                !expiry.isExpired(createdAt: existing.createdAt, lastAccess: existing.lastAccess, now: now)
            {
                entry = existing
            } else {
                try makeRoom(&contents, now: now)
                entry = Entry(attributes: [:], createdAt: now, lastAccess: now, version: 0, bytes: 0)
            }
            var evicted: [SessionID] = []
            if let principal = change.principal, let limit = principalLimit {
                let others = liveSessions(of: principal, in: &contents, now: now).filter { $0.id != change.id }
                evicted = try limit.victims(among: others, lastAccess: \.lastAccessedAtMillis, id: \.id)
            }
            entry.attributes[SessionPrincipal.attribute] = change.principal.map(SessionPrincipal.json)
            entry.attributes[SessionPrincipal.clientAttribute] = change.principal == nil ? nil : change.client.map(SessionPrincipal.json)
            entry.recount()
            entry.principal = change.principal
            entry.lastAccess = now
            entry.version += 1
            let existed = change.id.map { contents.remove($0) != nil } ?? false
            for id in evicted {
                contents.remove(id)
                contents.events.append(PendingEvent(kind: .evicted, id: id, principal: change.principal))
            }
            contents.insert(entry, as: change.newID)
            contents.events.append(
                PendingEvent(
                    kind: change.principal == nil ? .principalCleared : .principalSet, id: change.newID,
                    previous: existed ? change.id : nil, principal: change.principal))
            return PrincipalChangeResult(evicted: evicted)
        }
    }

    public func sessions(ofPrincipal principal: String) throws -> [PrincipalSessionEntry] {
        let now = clock.nowMillis()
        return locked { liveSessions(of: principal, in: &$0, now: now) }
            .sorted { ($0.createdAtMillis, $0.id.rawValue) < ($1.createdAtMillis, $1.id.rawValue) }
    }

    /// The live sessions of `principal`; expired ones are removed on the way.
    private func liveSessions(of principal: String, in contents: inout Contents, now: Int64) -> [PrincipalSessionEntry] {
        var live: [PrincipalSessionEntry] = []
        for id in contents.principals[principal] ?? [] {
            guard let entry = contents.sessions[id] else { continue }
            if expiry.isExpired(createdAt: entry.createdAt, lastAccess: entry.lastAccess, now: now) {
                contents.expire(id)
                continue
            }
            let client = entry.attributes[SessionPrincipal.clientAttribute].flatMap(decodeJSONString)
            live.append(
                PrincipalSessionEntry(
                    id: id, createdAtMillis: entry.createdAt, lastAccessedAtMillis: entry.lastAccess, node: nodeName,
                    client: client))
        }
        return live
    }

    // MARK: IdempotencyStore

    public func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim {
        let now = clock.nowMillis()
        return contents.withLock { contents in
            if let record = contents.records[key], record.expiresAt > now {
                switch record.state {
                case .inProgress(let fp): return fp == fingerprint ? .inProgress : .mismatch
                case .completed(let fp, let response): return fp == fingerprint ? .completed(response) : .mismatch
                }
            }
            contents.records.set(key, Record(state: .inProgress(fingerprint: fingerprint), expiresAt: now + inProgressMillis))
            return .claimed
        }
    }

    public func complete(_ record: IdempotencyRecord) throws {
        let now = clock.nowMillis()
        contents.withLock { contents in
            if let kept = contents.records[record.key], kept.expiresAt > now, case .completed = kept.state { return }
            contents.records.set(
                record.key,
                Record(
                    state: .completed(fingerprint: record.fingerprint, response: record.response),
                    expiresAt: now + record.ttlMillis))
        }
    }

    public func abandon(key: String) throws {
        contents.withLock { contents in
            if case .inProgress? = contents.records[key]?.state { contents.records.remove(key) }
        }
    }

    /// Sweeps every `intervalMillis` on a background timer until
    /// `stopSweeper()` or the store is released.
    public func startSweeper(intervalMillis: Int = 60_000) {
        sweeper.start(label: "session-sweeper", intervalMillis: intervalMillis) { [weak self] in self?.sweep() }
    }

    public func stopSweeper() { sweeper.stop() }
}
