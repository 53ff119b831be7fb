#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import SessionCore
import Synchronization
import SystemSupport


// Idempotency: claims are local, completed records replicate; keys are looked up on peers.
extension ReplicatedSessionStore {
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
    func recheckAfterPause(_ record: IdempotencyRecord) {
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
    func spreadReplayed(_ session: SessionID?) {
        if let session, let state = fullState(of: session) { emit([state]) }
    }

    /// Asks the peers about a key just claimed here and waits for every
    /// answer (at most `fetchTimeoutMillis`), or for one that decides.
    /// With `yieldsToEarlierClaims` false (a recheck of a claim already running), a peer's
    /// earlier claim does not withdraw this one.
    func lookUpOnPeers(
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
    package func lookUp(key: String) -> KeyLookupReply.Answer {
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
    package func mergeLookupReply(_ reply: KeyLookupReply) {
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
        let epoch = try checkReady()
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
        guard kept else { return }
        // Answered only if sent and no rejoin began meanwhile (which drops what this node holds).
        let sent = sinks.withLock({ $0.onRecord })?(replicated) ?? true
        guard sent && servingEpoch.load(ordering: .sequentiallyConsistent) == epoch else { throw notServing() }
    }

    public func abandon(key: String) throws {
        contents.withLock { contents in
            if let record = contents.records[key], record.response == nil { contents.records[key] = nil }
        }
    }
}
