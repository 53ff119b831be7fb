#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Synchronization

/// Sessions in this process's memory: the store of a single node, and the
/// building block of the replicated store.
///
/// Expiry is checked on every read; `sweep()` (or the sweeper thread started
/// by `startSweeper`) removes expired sessions nobody reads any more.
public final class MemorySessionStore: SessionStore {
    public let expiry: SessionExpiry
    public let clock: SessionClock
    /// At most this many sessions; creating one more fails with `capacityExceeded`.
    public let maxSessions: Int
    /// At most this many bytes of attribute names and values per session.
    public let maxSessionBytes: Int

    struct Entry {
        var attributes: [String: [UInt8]]
        var createdAt: Int64
        var lastAccess: Int64
        var version: UInt64
        var bytes: Int
    }

    private let entries = Mutex<[SessionID: Entry]>([:])
    private let sweeper = Mutex<(any DispatchSourceTimer)?>(nil)

    public init(
        expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system, maxSessions: Int = 1_000_000,
        maxSessionBytes: Int = 64 * 1024
    ) {
        self.expiry = expiry
        self.clock = clock
        self.maxSessions = maxSessions
        self.maxSessionBytes = maxSessionBytes
    }

    deinit { stopSweeper() }

    /// The number of sessions held, expired ones not yet swept included.
    public var count: Int { entries.withLock { $0.count } }

    public func load(_ id: SessionID) throws -> SessionSnapshot? {
        let now = clock.nowMillis()
        return entries.withLock { entries -> SessionSnapshot? in
            guard var entry = entries[id] else { return nil }
            if expiry.isExpired(createdAt: entry.createdAt, lastAccess: entry.lastAccess, now: now) {
                entries[id] = nil
                return nil
            }
            if now - entry.lastAccess >= expiry.touchIntervalMillis {
                entry.lastAccess = now
                entries[id] = entry
            }
            return SessionSnapshot(
                id: id, attributes: entry.attributes, createdAtMillis: entry.createdAt,
                lastAccessedAtMillis: entry.lastAccess, version: entry.version)
        }
    }

    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        let now = clock.nowMillis()
        return try entries.withLock { entries throws(SessionStoreError) -> AppliedDelta? in
            var created = false
            var entry: Entry
            if let existing = entries[delta.id],
                !expiry.isExpired(createdAt: existing.createdAt, lastAccess: existing.lastAccess, now: now)
            {
                entry = existing
            } else {
                entries[delta.id] = nil
                guard delta.createIfMissing else { return nil }
                if entries.count >= maxSessions {
                    entries = entries.filter {
                        !expiry.isExpired(createdAt: $0.value.createdAt, lastAccess: $0.value.lastAccess, now: now)
                    }
                    if entries.count >= maxSessions {
                        throw SessionStoreError(.capacityExceeded, "the store holds \(maxSessions) sessions")
                    }
                }
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
                    var current: Int64 = 0
                    if let bytes = entry.attributes[name] {
                        guard let n = decodeCounter(bytes) else {
                            throw SessionStoreError(.typeMismatch, "attribute '\(name)' is not an integer")
                        }
                        current = n
                    }
                    let (sum, overflow) = current.addingReportingOverflow(by)
                    if overflow { throw SessionStoreError(.typeMismatch, "attribute '\(name)' would overflow") }
                    entry.attributes[name] = encodeCounter(sum)
                    counters[name] = sum
                }
            }
            entry.bytes = entry.attributes.reduce(0) { $0 + $1.key.utf8.count + $1.value.count }
            if entry.bytes > maxSessionBytes {
                throw SessionStoreError(
                    .sessionTooLarge, "session would hold \(entry.bytes) bytes, the cap is \(maxSessionBytes)")
            }
            entry.version += 1
            entry.lastAccess = now
            entries[delta.id] = entry
            return AppliedDelta(version: entry.version, counters: counters, created: created)
        }
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        let now = clock.nowMillis()
        return entries.withLock { entries in
            guard var entry = entries.removeValue(forKey: id),
                !expiry.isExpired(createdAt: entry.createdAt, lastAccess: entry.lastAccess, now: now)
            else { return false }
            entry.lastAccess = now
            entry.version += 1
            entries[newID] = entry
            return true
        }
    }

    public func invalidate(_ id: SessionID) throws {
        _ = entries.withLock { $0.removeValue(forKey: id) }
    }

    /// Removes expired sessions; returns how many.
    @discardableResult
    public func sweep() -> Int {
        let now = clock.nowMillis()
        return entries.withLock { entries in
            let before = entries.count
            entries = entries.filter {
                !expiry.isExpired(createdAt: $0.value.createdAt, lastAccess: $0.value.lastAccess, now: now)
            }
            return before - entries.count
        }
    }

    /// Sweeps every `intervalMillis` on a background timer until
    /// `stopSweeper()` or the store is released.
    public func startSweeper(intervalMillis: Int = 60_000) {
        sweeper.withLock { timer in
            guard timer == nil else { return }
            let source = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "session-sweeper"))
            source.schedule(deadline: .now() + .milliseconds(intervalMillis), repeating: .milliseconds(intervalMillis))
            source.setEventHandler { [weak self] in self?.sweep() }
            source.resume()
            timer = source
        }
    }

    public func stopSweeper() {
        sweeper.withLock { timer in
            timer?.cancel()
            timer = nil
        }
    }
}
