/// Caps on the idempotency records (claims and completed responses) a store
/// keeps in memory. Anyone may send keyed requests, so records must not grow
/// without bound: past a cap the oldest records go first, those made without
/// a session before those of sessions.
public struct IdempotencyLimits: Sendable, Equatable {
    /// Records of every kind.
    public var maxRecords: Int
    /// Records made without a session (`IdempotencyScope.anonymous`).
    public var maxAnonymousRecords: Int
    /// Bytes of keys, fingerprints and responses, all records together.
    public var maxBytes: Int

    public init(maxRecords: Int = 100_000, maxAnonymousRecords: Int = 10_000, maxBytes: Int = 64 << 20) {
        precondition(maxRecords > 0 && maxAnonymousRecords > 0 && maxBytes > 0, "idempotency limits must be positive")
        self.maxRecords = maxRecords
        self.maxAnonymousRecords = maxAnonymousRecords
        self.maxBytes = maxBytes
    }
}

/// How many idempotency records a store holds, for metrics.
public struct IdempotencyRecordStats: Sendable, Equatable {
    /// Records held (claims included), expired ones not yet swept included.
    public var records = 0
    /// Of those, made without a session.
    public var anonymousRecords = 0
    /// Their bytes (keys, fingerprints, responses).
    public var bytes = 0
    /// Records dropped to stay within `IdempotencyLimits`, since the start.
    public var evictions = 0

    public init() {}
}

/// What a record table needs of its values.
public protocol IdempotencyTableValue: Sendable {
    /// When the record is forgotten (ms since 1970).
    var expiresAt: Int64 { get }
    /// Its bytes in memory, roughly: fingerprint and response.
    var byteCount: Int { get }
}

/// Idempotency records by storage key, within `IdempotencyLimits`: the
/// building block of the in-memory stores' records. Not thread-safe: the
/// store keeps it behind its lock.
///
/// Eviction is O(1) amortized: records are queued in insertion order (one
/// queue for anonymous records, one for the rest) and the oldest is dropped.
public struct IdempotencyRecordTable<Value: IdempotencyTableValue>: Sendable {
    private struct Slot {
        var value: Value
        var generation: UInt64
        var bytes: Int
    }

    /// Insertion order; entries whose slot was replaced or removed are skipped.
    private struct Queue {
        var entries: [(key: String, generation: UInt64)] = []
        var head = 0
        var live = 0

        mutating func append(_ key: String, _ generation: UInt64) {
            entries.append((key, generation))
            live += 1
        }

        mutating func popFirst() -> (key: String, generation: UInt64)? {
            guard head < entries.count else { return nil }
            defer {
                head += 1
                if head > 1024 && head * 2 > entries.count {
                    entries.removeFirst(head)
                    head = 0
                }
            }
            return entries[head]
        }

        /// Drops stale entries once they outnumber live ones (amortized O(1) per append).
        mutating func compact(isLive: (String, UInt64) -> Bool) {
            guard entries.count - head > 2 * live + 1024 else { return }
            entries = entries[head...].filter { isLive($0.key, $0.generation) }
            head = 0
        }
    }

    public let limits: IdempotencyLimits
    private var slots: [String: Slot] = [:]
    private var anonymousQueue = Queue()
    private var sessionQueue = Queue()
    private var nextGeneration: UInt64 = 0
    public private(set) var stats = IdempotencyRecordStats()

    public init(limits: IdempotencyLimits = IdempotencyLimits()) {
        self.limits = limits
    }

    /// The record of `key`, expired or not. Setting nil removes it; setting a value is `set`.
    public subscript(key: String) -> Value? {
        get { slots[key]?.value }
        set {
            if let newValue { set(key, newValue) } else { remove(key) }
        }
    }

    /// Keeps `value` under `key` (replacing what was there), then drops the
    /// oldest records while over a limit.
    public mutating func set(_ key: String, _ value: Value) {
        remove(key)
        nextGeneration += 1
        let anonymous = IdempotencyScope.isAnonymous(storageKey: key)
        let bytes = key.utf8.count + value.byteCount + 64
        slots[key] = Slot(value: value, generation: nextGeneration, bytes: bytes)
        stats.records += 1
        stats.bytes += bytes
        if anonymous {
            stats.anonymousRecords += 1
            anonymousQueue.append(key, nextGeneration)
        } else {
            sessionQueue.append(key, nextGeneration)
        }
        while stats.anonymousRecords > limits.maxAnonymousRecords, evictOldest(anonymous: true) {}
        while stats.records > limits.maxRecords || stats.bytes > limits.maxBytes {
            guard evictOldest(anonymous: stats.anonymousRecords > 0) || evictOldest(anonymous: false) else { break }
        }
        let slots = slots
        anonymousQueue.compact { slots[$0]?.generation == $1 }
        sessionQueue.compact { slots[$0]?.generation == $1 }
    }

    /// Forgets `key`'s record.
    public mutating func remove(_ key: String) {
        guard let slot = slots.removeValue(forKey: key) else { return }
        stats.records -= 1
        stats.bytes -= slot.bytes
        if IdempotencyScope.isAnonymous(storageKey: key) {
            stats.anonymousRecords -= 1
            anonymousQueue.live -= 1
        } else {
            sessionQueue.live -= 1
        }
    }

    /// Forgets every record expired at `now`.
    public mutating func removeExpired(now: Int64) {
        for (key, slot) in slots where slot.value.expiresAt <= now { remove(key) }
    }

    /// Every record, expired or not.
    public var all: [(key: String, value: Value)] { slots.map { ($0.key, $0.value.value) } }

    private mutating func evictOldest(anonymous: Bool) -> Bool {
        while let (key, generation) = anonymous ? anonymousQueue.popFirst() : sessionQueue.popFirst() {
            guard slots[key]?.generation == generation else { continue }
            remove(key)
            stats.evictions += 1
            return true
        }
        return false
    }
}
