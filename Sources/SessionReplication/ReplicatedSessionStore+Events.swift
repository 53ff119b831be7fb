import SessionCore
import Synchronization
import SystemSupport

/// Session events of the replicated store, once per cluster.
///
/// A change made by a request is reported by the node that made it, after
/// its peers took it (merges report nothing), with one exception: an
/// eviction. Two logins on two nodes at once may evict the same session, and
/// an eviction is also made by a sweep (a session left over the limit by such
/// logins), so evictions, like expiries, are reported by the session's
/// *owner*: of the live members (`liveMembers`: this node and its connected
/// peers), the one with the highest rendezvous score for the session's
/// handle. Every node sees each eviction (the evicting login names its
/// victims) and each expiry; only the owner reports it, once. While the
/// members agree on who is live, every such event is reported once; while
/// they disagree (a peer going down or coming back, a partition), one may be
/// reported twice or not at all. Without `liveMembers` (a store on its own)
/// the store owns every session.
extension ReplicatedSessionStore {
    /// The node ids of the live members, this node's included (set by `ReplicationNode`); nil: this node alone.
    package var liveMembers: (@Sendable () -> [UInt32])? {
        get { sinks.withLock { $0.liveMembers } }
        set { sinks.withLock { $0.liveMembers = newValue } }
    }

    /// The principal of a session, decoded; nil when not logged in.
    static func principal(of session: ReplicatedSession) -> String? {
        Contents.principalKey(session).flatMap(decodeJSONString)
    }

    /// Notes an owner-reported event (`expired`, `evicted`) for `deliverEvents`, while someone listens.
    func recordOwned(_ event: PendingEvent, in contents: inout Contents) {
        guard events.isListened else { return }
        contents.owned.append(event)
        pendingOwned.add(1, ordering: .relaxed)
    }

    /// Notes the expiry of `session` (just removed), when it was logged in.
    func recordExpiry(of id: SessionID, _ session: ReplicatedSession, in contents: inout Contents) {
        guard let principalJSON = Contents.principalKey(session) else { return }
        recordOwned(PendingEvent(kind: .expired, id: id, principal: decodeJSONString(principalJSON)), in: &contents)
    }

    /// Notes the evictions a login names (`evictsAttribute`), each once per node.
    func recordEvictions(named session: ReplicatedSession, in contents: inout Contents, now: Int64) {
        let handles = Self.evicts(of: session)
        guard !handles.isEmpty else { return }
        let principal = Self.principal(of: session)
        for text in handles where contents.evictionsSeen[text] == nil {
            contents.evictionsSeen[text] = now
            guard let handle = SessionHandle(rawValue: text) else { continue }
            recordOwned(PendingEvent(kind: .evicted, handle: handle, principal: principal), in: &contents)
        }
    }

    /// Delivers `local` (this node's own changes) and the owner-reported events this node owns,
    /// outside the lock.
    func deliverEvents(_ local: [PendingEvent] = []) {
        var owned: [PendingEvent] = []
        if pendingOwned.load(ordering: .relaxed) > 0 {
            let recorded = contents.withLock { contents in
                defer { contents.owned = [] }
                return contents.owned
            }
            pendingOwned.subtract(recorded.count, ordering: .relaxed)
            let members = liveMembers?()
            let me = hlc.node
            owned = recorded.filter { event in
                guard let members else { return true }
                return Self.owner(of: event.handle, among: members) == me
            }
        }
        events.emit(local + owned, atMillis: clock.nowMillis())
    }

    /// The member that reports an owner-reported event of a session: the highest rendezvous score.
    static func owner(of handle: SessionHandle, among members: [UInt32]) -> UInt32? {
        var seed: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a over the handle
        for byte in handle.rawValue.utf8 { seed = (seed ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return members.max { score(seed, $0) < score(seed, $1) }
    }

    private static func score(_ seed: UInt64, _ node: UInt32) -> (UInt64, UInt32) {
        var rng = SplitMix64(seed: seed ^ (UInt64(node) &* 0x9e37_79b9_7f4a_7c15))
        return (rng.next(), node)
    }
}
