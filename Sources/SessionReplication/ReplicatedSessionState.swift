import SessionCore

// The merge-able session value of docs/replication.md (a state-based CRDT).
//
// Every merge below is a join: idempotent, commutative and associative, so
// updates may be re-sent, duplicated or reordered and every node converges.
// Local writes (`set`, `remove`, `increment`, `invalidate`, `regenerate`)
// change the value and return the piece to replicate; peers `merge` it.
//
// Deviation from the design text: increments may be negative
// (`SessionChange.increment(by:)` takes any Int64), so a node's cumulative
// sum does not only grow. Each node's count therefore carries the stamp of
// its latest increment, and the later stamp wins (not the larger sum).

/// One node's increments on top of an attribute's epoch.
package struct NodeCount: Sendable, Hashable {
    /// The node's cumulative sum of increments in the epoch.
    public var sum: Int64
    /// The stamp of the node's latest increment; a later one replaces an earlier one.
    public var stamp: HLCStamp

    /// A node's count: its sum so far and the stamp of its latest increment.
    public init(sum: Int64, stamp: HLCStamp) {
        self.sum = sum
        self.stamp = stamp
    }
}

/// The replicated state of one attribute: the last `set` or `remove` (its
/// epoch) and the increments made on top of it, per node.
package struct AttributeState: Sendable, Hashable {
    /// JSON bytes of the last `set`; nil for a `remove` (a tombstone) or when never set.
    public private(set) var base: [UInt8]?
    /// The stamp of the write that set `base`; `HLCStamp.zero` when never set.
    public private(set) var epoch: HLCStamp
    /// Node id → that node's increments in this epoch.
    public private(set) var counts: [UInt32: NodeCount]
    /// The epoch the write that set `base` replaced on its node (`HLCStamp.zero`: none): when a
    /// merge lets one set win over another that it had not seen, the loser was a concurrent set,
    /// overwritten (last writer wins), and `merge` says so.
    public private(set) var overwrote: HLCStamp

    init(base: [UInt8]?, epoch: HLCStamp, counts: [UInt32: NodeCount] = [:], overwrote: HLCStamp = .zero) {
        self.base = base
        self.epoch = epoch
        self.counts = counts
        self.overwrote = overwrote
    }

    /// The attribute's JSON bytes: when increments exist, the integer base
    /// (0 for none or a tombstone) plus their sum (wrapping on overflow, the
    /// same on every node); otherwise the base bytes; nil when absent.
    /// A base that is not an integer ignores counts (a local `increment`
    /// refuses it, so only a faulty peer could produce them).
    public var value: [UInt8]? {
        if counts.isEmpty { return base }
        var total: Int64 = 0
        if let base {
            guard let n = decodeCounter(base) else { return base }
            total = n
        }
        for count in counts.values { total &+= count.sum }
        return encodeCounter(total)
    }

    /// Joins `other` into this state. The later epoch wins and brings its own
    /// counts (a set or remove discards older increments); within one epoch,
    /// each node's later count wins. Equal stamps with different contents
    /// (only from a faulty peer) are still resolved the same everywhere.
    /// Returns whether a set (or remove) was overwritten by one written
    /// concurrently — without its writer having seen it (`overwrote`).
    @discardableResult
    public mutating func merge(_ other: AttributeState) -> Bool {
        if other.epoch != epoch || other.base != base || other.overwrote != overwrote {
            let otherWins = Self.precedes(self, other)
            let (winner, loser) = otherWins ? (other, self) : (self, other)
            if otherWins { self = other }
            return loser.epoch != .zero && winner.overwrote < loser.epoch
        }
        for (node, theirs) in other.counts {
            if let mine = counts[node], (theirs.stamp, theirs.sum) <= (mine.stamp, mine.sum) { continue }
            counts[node] = theirs
        }
        return false
    }

    /// Orders epochs: by stamp, then by base bytes (nil first), then by what they overwrote.
    private static func precedes(_ a: AttributeState, _ b: AttributeState) -> Bool {
        if a.epoch != b.epoch { return a.epoch < b.epoch }
        if a.base != b.base {
            guard let bBase = b.base else { return false }
            guard let aBase = a.base else { return true }
            return aBase.lexicographicallyPrecedes(bBase)
        }
        return a.overwrote < b.overwrote
    }

    /// The largest stamp the state carries.
    var maxStamp: HLCStamp { counts.values.reduce(epoch) { max($0, $1.stamp) } }
}

/// One session as every node holds it: merge-able with any other copy or update of it.
package struct ReplicatedSession: Sendable, Hashable {
    /// Creation time (ms); merged by min.
    public private(set) var createdAtMillis: Int64
    /// Last access (ms), for the idle timeout; merged by max.
    public private(set) var lastAccessMillis: Int64
    /// The largest stamp applied.
    public private(set) var version: HLCStamp
    /// Per node, the stamp of its latest write to this session that this copy
    /// holds, with all of that node's earlier writes: what read-your-writes
    /// compares (a client's read token is the writer's `seen` after its write).
    public private(set) var seen: [UInt32: HLCStamp]
    /// Attribute name → state, tombstones of removed attributes included.
    /// Empty once the session is invalidated.
    public private(set) var attributes: [String: AttributeState]
    /// The stamp of the session's invalidation, if any. Invalidation is final:
    /// the session keeps no data and ignores every later update, whatever its
    /// stamp, so an ID never comes back (concurrent writes to a session being
    /// invalidated are lost, as if they came first).
    public private(set) var invalidated: HLCStamp?

    /// A new, empty session created at `createdAtMillis` by the write stamped `stamp`.
    public init(createdAtMillis: Int64, at stamp: HLCStamp) {
        self.init(
            createdAtMillis: createdAtMillis, lastAccessMillis: createdAtMillis, version: stamp, attributes: [:],
            invalidated: nil, seen: [stamp.node: stamp])
    }

    init(
        createdAtMillis: Int64, lastAccessMillis: Int64, version: HLCStamp, attributes: [String: AttributeState],
        invalidated: HLCStamp?, seen: [UInt32: HLCStamp]
    ) {
        self.createdAtMillis = createdAtMillis
        self.lastAccessMillis = lastAccessMillis
        self.version = version
        self.attributes = invalidated == nil ? attributes : [:]
        self.invalidated = invalidated
        self.seen = seen
    }

    /// Whether this copy holds every write that `token` names (each node's writes up to its stamp).
    public func contains(_ token: ReadToken) -> Bool {
        token.stamps.allSatisfy { wanted in (seen[wanted.node] ?? .zero) >= wanted }
    }

    private mutating func see(_ stamp: HLCStamp) {
        if let mine = seen[stamp.node], mine >= stamp { return }
        seen[stamp.node] = stamp
    }

    /// Whether the session was invalidated (its ID is dead).
    public var isInvalidated: Bool { invalidated != nil }

    /// Joins another copy of this session, or an update of it, into this one.
    /// Returns how many sets of this copy or of `other` were overwritten by
    /// concurrent ones (see `AttributeState.merge`).
    @discardableResult
    public mutating func merge(_ other: ReplicatedSession) -> Int {
        createdAtMillis = min(createdAtMillis, other.createdAtMillis)
        lastAccessMillis = max(lastAccessMillis, other.lastAccessMillis)
        version = max(version, other.version)
        for stamp in other.seen.values { see(stamp) }
        if let theirs = other.invalidated { invalidate(at: theirs) }
        return other.attributes.reduce(0) { $0 + (mergeAttribute($1.key, $1.value) ? 1 : 0) }
    }

    @discardableResult
    private mutating func mergeAttribute(_ name: String, _ state: AttributeState) -> Bool {
        guard invalidated == nil else { return false }
        guard var mine = attributes[name] else {
            attributes[name] = state
            return false
        }
        let overwritten = mine.merge(state)
        attributes[name] = mine
        return overwritten
    }

    /// Applies a local write's attribute state stamped `stamp`; returns it.
    private mutating func write(_ name: String, _ state: AttributeState, at stamp: HLCStamp) -> AttributeState {
        mergeAttribute(name, state)
        version = max(version, stamp)
        see(stamp)
        return state
    }

    // MARK: Local writes. Each takes a fresh stamp from this node's clock and
    // returns the attribute state to replicate. Call them on live sessions only.

    /// Sets an attribute to JSON bytes: a new epoch.
    public mutating func set(_ name: String, _ bytes: [UInt8], at stamp: HLCStamp) -> AttributeState {
        write(name, AttributeState(base: bytes, epoch: stamp, overwrote: attributes[name]?.epoch ?? .zero), at: stamp)
    }

    /// Removes an attribute: a new epoch with a tombstone.
    public mutating func remove(_ name: String, at stamp: HLCStamp) -> AttributeState {
        write(name, AttributeState(base: nil, epoch: stamp, overwrote: attributes[name]?.epoch ?? .zero), at: stamp)
    }

    /// Adds `amount` to an integer attribute (absent counts as 0), as node
    /// `stamp.node`. Throws `typeMismatch`, changing nothing, when the value is
    /// not an integer or would overflow.
    public mutating func increment(
        _ name: String, by amount: Int64, at stamp: HLCStamp
    ) throws(SessionStoreError) -> AttributeState {
        let current = attributes[name] ?? AttributeState(base: nil, epoch: .zero)
        var value: Int64 = 0
        if let bytes = current.value {
            guard let n = decodeCounter(bytes) else {
                throw SessionStoreError(.typeMismatch, "attribute '\(name)' is not an integer")
            }
            value = n
        }
        let (sum, sumOverflow) = (current.counts[stamp.node]?.sum ?? 0).addingReportingOverflow(amount)
        if sumOverflow || value.addingReportingOverflow(amount).overflow {
            throw SessionStoreError(.typeMismatch, "attribute '\(name)' would overflow")
        }
        let state = AttributeState(
            base: current.base, epoch: current.epoch, counts: [stamp.node: NodeCount(sum: sum, stamp: stamp)],
            overwrote: current.overwrote)
        return write(name, state, at: stamp)
    }

    /// Applies one `SessionChange` (see `set`, `remove`, `increment`).
    public mutating func apply(_ change: SessionChange, at stamp: HLCStamp) throws(SessionStoreError) -> AttributeState {
        switch change {
        case .set(let name, let bytes): set(name, bytes, at: stamp)
        case .remove(let name): remove(name, at: stamp)
        case .increment(let name, let amount): try increment(name, by: amount, at: stamp)
        }
    }

    /// Applies a local delta's changes, each with a fresh stamp from `clock`,
    /// all or nothing, and refreshes the idle timer. Returns the update to
    /// send to every peer (the changed attributes and the delta's
    /// idempotency record) and the value of every incremented attribute.
    /// Refuses (`invalidValue`) names and values peers would refuse.
    public mutating func apply(
        _ delta: SessionDelta, clock: HybridLogicalClock, nowMillis: Int64
    ) throws(SessionStoreError) -> (update: SessionUpdate, counters: [String: Int64]) {
        var next = self
        var changed: [String: AttributeState] = [:]
        var counters: [String: Int64] = [:]
        for change in delta.changes {
            guard change.attribute.utf8.count <= SessionUpdate.maxNameBytes else {
                throw SessionStoreError(.invalidValue, "attribute name longer than \(SessionUpdate.maxNameBytes) bytes")
            }
            if case .set(let name, let bytes) = change, bytes.count > SessionUpdate.maxValueBytes {
                throw SessionStoreError(.invalidValue, "attribute '\(name)' longer than \(SessionUpdate.maxValueBytes) bytes")
            }
            let state = try next.apply(change, at: clock.now())
            changed[change.attribute] = state  // each state includes the earlier ones of this delta
            if case .increment(let name, _) = change {
                counters[name] = next.attributes[name]?.value.flatMap(decodeCounter) ?? 0
            }
        }
        next.touch(nowMillis: nowMillis)
        self = next
        let update = SessionUpdate(
            id: delta.id, session: self, attributes: changed, origin: clock.node,
            idempotencyRecord: delta.idempotencyRecord)
        return (update, counters)
    }

    /// Refreshes the idle timer (replicate with `SessionUpdate(id:session:attributes: [:], origin:)`).
    public mutating func touch(nowMillis: Int64) {
        lastAccessMillis = max(lastAccessMillis, nowMillis)
    }

    /// Invalidates the session: drops its data, keeps a tombstone (the
    /// earliest invalidation stamp wins). Replicate `SessionUpdate(id:session:)`.
    public mutating func invalidate(at stamp: HLCStamp) {
        invalidated = min(invalidated ?? stamp, stamp)
        attributes = [:]
        version = max(version, stamp)
        see(stamp)
    }

    /// Moves this session to `newID`, against session fixation, as two
    /// updates: the new ID's full state (same attribute states, creation time
    /// kept, version `stamp`) and then the old ID's tombstone. This value
    /// becomes the tombstone; the new ID's session is returned. Send both, in
    /// that order: a late delta for the old ID is then discarded everywhere.
    public mutating func regenerate(
        from oldID: SessionID, to newID: SessionID, at stamp: HLCStamp, nowMillis: Int64
    ) -> (newSession: ReplicatedSession, updates: [SessionUpdate]) {
        var moved = ReplicatedSession(
            createdAtMillis: createdAtMillis, lastAccessMillis: max(lastAccessMillis, nowMillis),
            version: max(version, stamp), attributes: attributes, invalidated: nil, seen: seen)
        moved.see(stamp)
        invalidate(at: stamp)
        return (moved, [SessionUpdate(id: newID, session: moved), SessionUpdate(id: oldID, session: self)])
    }

    /// What `SessionStore.load` returns: nil once invalidated. Expiry is the store's to check.
    public func snapshot(id: SessionID) -> SessionSnapshot? {
        guard invalidated == nil else { return nil }
        return SessionSnapshot(
            id: id, attributes: attributes.compactMapValues(\.value), createdAtMillis: createdAtMillis,
            lastAccessedAtMillis: lastAccessMillis, version: version.packedVersion)
    }
}

/// What a node sends its peers about one session (the `delta` message):
/// part or all of its `ReplicatedSession`, plus the idempotency record of
/// the request that produced it, so both arrive together.
///
/// A regenerated ID is two updates (see `ReplicatedSession.regenerate`):
/// the new ID's full state, then the old ID's tombstone.
package struct SessionUpdate: Sendable, Equatable {
    /// The session the update is about.
    public var id: SessionID
    /// The session's times, version and invalidation, with only the attributes that changed.
    public var state: ReplicatedSession
    /// The record of the `Idempotency-Key` request that made the change, stored by every peer.
    public var idempotencyRecord: IdempotencyRecord?

    /// An update carrying `attributes` of `session` (all of them when nil: a full state).
    ///
    /// A full state carries the session's whole `seen` vector. A partial one
    /// carries only the entry of `origin`, the node making the update: its own
    /// earlier writes went to each peer before, on the same connection, but
    /// other nodes' writes it merged may not have reached the receiver yet.
    public init(
        id: SessionID, session: ReplicatedSession, attributes: [String: AttributeState]? = nil, origin: UInt32? = nil,
        idempotencyRecord: IdempotencyRecord? = nil
    ) {
        self.id = id
        let seen: [UInt32: HLCStamp] =
            if attributes == nil { session.seen } else { origin.flatMap { o in session.seen[o].map { [o: $0] } } ?? [:] }
        self.state = ReplicatedSession(
            createdAtMillis: session.createdAtMillis, lastAccessMillis: session.lastAccessMillis,
            version: session.version, attributes: attributes ?? session.attributes, invalidated: session.invalidated,
            seen: seen)
        self.idempotencyRecord = idempotencyRecord
    }

    // MARK: Wire form

    /// The longest attribute name (and idempotency key or fingerprint) the decoder accepts.
    public static let maxNameBytes = 1024
    /// The longest attribute value the decoder accepts.
    public static let maxValueBytes = 1 << 20
    /// The most per-node counts one attribute may carry.
    public static let maxNodesPerAttribute = 256
    /// The longest idempotency record body the decoder accepts.
    public static let maxRecordBodyBytes = 4 << 20

    /// Writes the update; attributes and counts in sorted order, so equal updates encode equally.
    public func encode(into w: inout WireWriter) {
        w.string(id.rawValue)
        w.i64(state.createdAtMillis)
        w.i64(state.lastAccessMillis)
        state.version.encode(into: &w)
        w.bool(state.invalidated != nil)
        state.invalidated?.encode(into: &w)
        w.u32(UInt32(state.attributes.count))
        for (name, attribute) in state.attributes.sorted(by: { $0.key < $1.key }) {
            w.string(name)
            w.bool(attribute.base != nil)
            if let base = attribute.base { w.data(base) }
            attribute.epoch.encode(into: &w)
            attribute.overwrote.encode(into: &w)
            w.u32(UInt32(attribute.counts.count))
            for (node, count) in attribute.counts.sorted(by: { $0.key < $1.key }) {
                w.u32(node)
                w.i64(count.stamp.millis)
                w.u32(count.stamp.counter)
                w.i64(count.sum)
            }
        }
        w.u32(UInt32(state.seen.count))
        for stamp in state.seen.values.sorted(by: { $0.node < $1.node }) { stamp.encode(into: &w) }
        w.bool(idempotencyRecord != nil)
        idempotencyRecord?.encode(into: &w)
    }

    /// Reads what `encode(into:)` wrote, checking every limit; does not require the end of input.
    public init(from r: inout WireReader) throws(WireError) {
        guard let id = SessionID(rawValue: try r.string(limit: 64)) else { throw WireError("invalid session id") }
        let created = try r.i64()
        let lastAccess = try r.i64()
        let version = try HLCStamp(from: &r)
        let invalidated = try r.bool() ? try HLCStamp(from: &r) : nil
        var attributes: [String: AttributeState] = [:]
        for _ in 0..<(try r.count()) {
            let name = try r.string(limit: Self.maxNameBytes)
            let base = try r.bool() ? try r.data(limit: Self.maxValueBytes) : nil
            let epoch = try HLCStamp(from: &r)
            let overwrote = try HLCStamp(from: &r)
            guard overwrote <= epoch else { throw WireError("attribute '\(name)' overwrote a later epoch") }
            var counts: [UInt32: NodeCount] = [:]
            for _ in 0..<(try r.count(limit: Self.maxNodesPerAttribute)) {
                let node = try r.u32()
                let stamp = HLCStamp(millis: try r.i64(), counter: try r.u32(), node: node)
                guard counts.updateValue(NodeCount(sum: try r.i64(), stamp: stamp), forKey: node) == nil else {
                    throw WireError("attribute '\(name)' counts node \(node) twice")
                }
            }
            let attribute = AttributeState(base: base, epoch: epoch, counts: counts, overwrote: overwrote)
            guard attribute.maxStamp <= version else { throw WireError("attribute '\(name)' is newer than the version") }
            guard attributes.updateValue(attribute, forKey: name) == nil else {
                throw WireError("attribute '\(name)' appears twice")
            }
        }
        if let invalidated, invalidated > version { throw WireError("invalidation is newer than the version") }
        var seen: [UInt32: HLCStamp] = [:]
        for _ in 0..<(try r.count(limit: Self.maxNodesPerAttribute)) {
            let stamp = try HLCStamp(from: &r)
            guard stamp <= version else { throw WireError("a seen stamp is newer than the version") }
            guard seen.updateValue(stamp, forKey: stamp.node) == nil else {
                throw WireError("node \(stamp.node) is seen twice")
            }
        }
        var record: IdempotencyRecord? = nil
        if try r.bool() { record = try IdempotencyRecord(from: &r) }
        self.id = id
        self.state = ReplicatedSession(
            createdAtMillis: created, lastAccessMillis: lastAccess, version: version, attributes: attributes,
            invalidated: invalidated, seen: seen)
        self.idempotencyRecord = record
    }
}

extension IdempotencyRecord {
    /// The record on the wire (inside a `SessionUpdate` or a `ReplicatedRecord`).
    package func encode(into w: inout WireWriter) {
        w.string(key)
        w.string(fingerprint)
        w.u32(UInt32(truncatingIfNeeded: response.status))
        w.u32(UInt32(response.headers.count))
        for header in response.headers {
            w.u32(UInt32(header.count))
            for part in header { w.string(part) }
        }
        w.data(response.body)
        w.i64(ttlMillis)
    }

    /// Reads what `encode(into:)` wrote, with `SessionUpdate`'s limits.
    package init(from r: inout WireReader) throws(WireError) {
        let key = try r.string(limit: SessionUpdate.maxNameBytes)
        let fingerprint = try r.string(limit: SessionUpdate.maxNameBytes)
        let status = try r.u32()
        guard status <= 999 else { throw WireError("invalid status \(status)") }
        var headers: [[String]] = []
        for _ in 0..<(try r.count()) {
            var header: [String] = []
            for _ in 0..<(try r.count()) { header.append(try r.string()) }
            headers.append(header)
        }
        let body = try r.data(limit: SessionUpdate.maxRecordBodyBytes)
        let ttl = try r.i64()
        guard ttl >= 0 else { throw WireError("negative record TTL") }
        self.init(
            key: key, fingerprint: fingerprint,
            response: StoredResponse(status: Int(status), headers: headers, body: body), ttlMillis: ttl)
    }
}

/// What a client shows to read its own writes on any node: the writer's
/// `seen` vector after the write, as "millis.counter.node" stamps joined by
/// "_" (cookie-safe). A node serves the client once its copy `contains` it.
package struct ReadToken: Sendable, Equatable, CustomStringConvertible {
    /// The most stamps a token may carry (one per node that wrote the session).
    public static let maxStamps = 64

    public var stamps: [HLCStamp]

    public init(_ seen: [UInt32: HLCStamp]) {
        stamps = seen.values.sorted { $0.node < $1.node }
    }

    /// Parses a token; nil when malformed or longer than `maxStamps`.
    public init?(_ text: String) {
        let parts = text.split(separator: "_", omittingEmptySubsequences: false)
        guard !parts.isEmpty, parts.count <= Self.maxStamps else { return nil }
        var stamps: [HLCStamp] = []
        for part in parts {
            guard let stamp = HLCStamp(token: String(part)) else { return nil }
            stamps.append(stamp)
        }
        self.stamps = stamps
    }

    public var description: String {
        stamps.map { "\($0.millis).\($0.counter).\($0.node)" }.joined(separator: "_")
    }
}
