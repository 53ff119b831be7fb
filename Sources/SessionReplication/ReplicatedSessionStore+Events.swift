import SessionCore
import Synchronization
import SystemSupport

/// Session events of the replicated store, once per cluster.
///
/// A change made by a request is reported by the node that made it, after
/// its peers took it (merges report nothing). The expiry of a logged-in
/// session happens on every node, so each node reports only the sessions it
/// *owns*: of the live members (`liveMembers`: itself and its connected
/// peers), the one with the highest rendezvous score for the session ID.
/// While the members agree on who is live, every expiry is reported once;
/// while they disagree (a peer going down or coming back, a partition), an
/// expiry may be reported twice or not at all. Without `liveMembers` (a
/// store on its own) the store owns every session.
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

    /// Notes the expiry of `session` (just removed) for `deliverEvents`, when it was logged in and
    /// someone listens.
    func recordExpiry(of id: SessionID, _ session: ReplicatedSession, in contents: inout Contents) {
        guard let principalJSON = Contents.principalKey(session), events.isListened else { return }
        contents.expired.append(PendingEvent(kind: .expired, id: id, principal: decodeJSONString(principalJSON)))
        pendingExpiries.add(1, ordering: .relaxed)
    }

    /// Delivers `local` (this node's own changes) and the expiries this node owns, outside the lock.
    func deliverEvents(_ local: [PendingEvent] = []) {
        var owned: [PendingEvent] = []
        if pendingExpiries.load(ordering: .relaxed) > 0 {
            let expired = contents.withLock { contents in
                defer { contents.expired = [] }
                return contents.expired
            }
            pendingExpiries.subtract(expired.count, ordering: .relaxed)
            let members = liveMembers?()
            let me = hlc.node
            owned = expired.filter { event in
                guard let members else { return true }
                return Self.owner(of: event.id, among: members) == me
            }
        }
        events.emit(local + owned, atMillis: clock.nowMillis())
    }

    /// The member that reports session `id`'s expiry: the highest rendezvous score.
    static func owner(of id: SessionID, among members: [UInt32]) -> UInt32? {
        var seed: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a over the ID
        for byte in id.rawValue.utf8 { seed = (seed ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return members.max { score(seed, $0) < score(seed, $1) }
    }

    private static func score(_ seed: UInt64, _ node: UInt32) -> (UInt64, UInt32) {
        var rng = SplitMix64(seed: seed ^ (UInt64(node) &* 0x9e37_79b9_7f4a_7c15))
        return (rng.next(), node)
    }
}
