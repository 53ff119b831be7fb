#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import SessionCore
import Synchronization
import SystemSupport


// What peers send: merges of updates and records, and the full state for a state transfer.
extension ReplicatedSessionStore {
    // MARK: Replication

    /// Merges an update from a peer. Returns false, changing nothing, when
    /// its stamp is too far ahead of this node's clock (a broken peer clock).
    /// An unknown session is created only when the update is not expired.
    @discardableResult
    package func merge(_ update: SessionUpdate) -> Bool {
        guard hlc.observe(update.state.version) else { return false }
        mergeLocked(update)
        notifyMerged(update.id)
        return true
    }

    func mergeLocked(_ update: SessionUpdate) {
        let now = clock.nowMillis()
        contents.withLock { contents in
            if var session = contents.sessions[update.id] {
                let overwritten = session.merge(update.state)
                if overwritten > 0 { overwrittenSets.add(overwritten, ordering: .relaxed) }
                contents[update.id] = session
            } else if !isExpired(update.state, now: now) {
                contents[update.id] = update.state
            }
            // The evictions a login names, from the update itself: this node's copy of it may
            // already be a tombstone (attributes gone), when the evicting session was ended too.
            recordEvictions(named: update.state, in: &contents, now: now)
            settlePrincipal(after: update, in: &contents, now: now)
            if let record = update.idempotencyRecord {
                // The write that carried the record refreshed lastAccess to its time.
                contents.keep(
                    record, expiresAt: update.state.lastAccessMillis + record.ttlMillis, now: now, session: update.id)
            }
        }
    }

    /// Merges an idempotency record from a peer (kept unless already expired).
    package func merge(record: ReplicatedRecord) { merge(record: record, session: nil) }

    func merge(record: ReplicatedRecord, session: SessionID?) {
        let now = clock.nowMillis()
        contents.withLock { $0.keep(record.record, expiresAt: record.expiresAtMillis, now: now, session: session) }
    }

    /// The completed record of `key`, if any (what a relay passes on).
    func completedRecord(key: String) -> ReplicatedRecord? {
        let now = clock.nowMillis()
        return contents.withLock { $0.records[key]?.replicated(key: key, now: now) }
    }

    /// The full state of one session or tombstone (nil when unknown or expired), for a peer's fetch.
    package func fullState(of id: SessionID) -> SessionUpdate? {
        let now = clock.nowMillis()
        return contents.withLock { contents in
            guard let session = contents.sessions[id], !isExpired(session, now: now) else { return nil }
            return SessionUpdate(id: id, session: session)
        }
    }

    /// Every unexpired session and tombstone as a full-state update, in chunks
    /// of at most `chunkSize`, for a state transfer.
    package func snapshot(chunkSize: Int) -> [[SessionUpdate]] {
        precondition(chunkSize > 0, "chunk size must be positive")
        let now = clock.nowMillis()
        let sessions = contents.withLock { $0.sessions }
        let all = sessions.filter { !isExpired($0.value, now: now) }
            .map { SessionUpdate(id: $0.key, session: $0.value) }
        return stride(from: 0, to: all.count, by: chunkSize)
            .map { Array(all[$0..<$0 + min(chunkSize, all.count - $0)]) }
    }

    /// Every unexpired completed idempotency record, for a state transfer.
    package func recordSnapshot() -> [ReplicatedRecord] {
        let now = clock.nowMillis()
        return contents.withLock { contents in
            contents.records.all.compactMap { key, record in record.replicated(key: key, now: now) }
        }
    }
}
