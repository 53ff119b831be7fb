#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SessionCore
import SystemSupport

/// Sessions by principal in the replicated store: each node indexes the
/// sessions it holds by their replicated principal attribute.
///
/// A login on a node checks the limit against what that node holds and
/// invalidates the least recently used sessions it sees beyond it. The new
/// session names what it ended — those sessions and its own old ID — by
/// handle in `sessioncluster.evicts`, so a peer that merges it before their
/// tombstones (updates arrive in any order) ends them at once, and ends any
/// of them that arrives later.
///
/// Logins on two nodes at once can still leave a principal with more
/// sessions than the limit. Every node then serves only the principal's
/// `maxSessions` most recent logins (by the HLC stamp of their principal):
/// the others count as gone (`isOverLimit`) — not invalidated, since a node
/// that has merged only part of the logins could pick differently — and
/// expire unused. The rule is a function of the merged state, so once the
/// nodes hold the same sessions they serve the same ones.
extension ReplicatedSessionStore {
    /// The attribute holding the name of the node that last wrote a logged-in session.
    public static let nodeAttribute = "sessioncluster.node"
    /// The attribute of a logged-in session listing the handles of the sessions its login evicted.
    public static let evictsAttribute = "sessioncluster.evicts"
    /// The attribute listing everything its login ended: the evicted sessions and its own old ID.
    public static let endsAttribute = "sessioncluster.ends"

    /// The change that records this node on a logged-in session it writes, when not already there.
    static func nodeChange(_ session: ReplicatedSession, _ nodeJSON: [UInt8]) -> SessionChange? {
        guard session.attributes[SessionPrincipal.attribute]?.base != nil,
            session.attributes[nodeAttribute]?.base != nodeJSON
        else { return nil }
        return .set(nodeAttribute, nodeJSON)
    }

    public func changePrincipal(_ change: PrincipalChange) throws -> PrincipalChangeResult {
        if let principal = change.principal { try SessionPrincipal.validate(principal) }
        let epoch = try checkReady()
        let now = clock.nowMillis()
        let principalJSON = change.principal.map(SessionPrincipal.json)
        var evicted: [SessionID] = []
        let updates = try contents.withLock { contents throws(SessionStoreError) -> [SessionUpdate] in
            try changePrincipalLocked(change, principalJSON, &contents, now: now, evicted: &evicted)
        }
        guard emit(updates, servedSince: epoch) else { throw notServing() }
        let existed = change.id.map { id in updates.contains { $0.id == id } } ?? false
        deliverEvents([  // the evictions: by their owners (recordEvictions)
            PendingEvent(
                kind: change.principal == nil ? .principalCleared : .principalSet, id: change.newID,
                previous: existed ? change.id : nil, principal: change.principal)
        ])
        return PrincipalChangeResult(evicted: evicted)
    }

    private func changePrincipalLocked(
        _ change: PrincipalChange, _ principalJSON: [UInt8]?, _ contents: inout Contents, now: Int64,
        evicted: inout [SessionID]
    ) throws(SessionStoreError) -> [SessionUpdate] {
        guard contents.sessions[change.newID] == nil else {
            throw SessionStoreError(.invalidValue, "the new ID of a login is in use")
        }
        var updates: [SessionUpdate] = []
        let existing = change.id.flatMap { live(&contents, $0, now: now) }
        if existing == nil { try makeRoom(&contents, now: now) }  // before anything changes
        if let principalJSON, let limit = principalLimit {
            let others = liveSessions(principalJSON, in: &contents, now: now).filter { $0.id != change.id }
            for victim in try limit.victims(among: others, lastAccess: \.session.lastAccessMillis, id: \.id) {
                updates.append(invalidateLocked(victim, in: &contents, now: now))
                evicted.append(victim)
            }
        }
        var session: ReplicatedSession
        if let id = change.id, var existing {
            existing.touch(nowMillis: now)  // the tombstone lives an idle timeout from now
            let (moved, moves) = existing.regenerate(from: id, to: change.newID, at: hlc.now(), nowMillis: now)
            contents[id] = existing
            updates += moves.filter { $0.id == id }  // the old ID's tombstone; the new state goes last
            session = moved
        } else {
            session = ReplicatedSession(createdAtMillis: now, at: hlc.now())
        }
        if let principalJSON {
            // What this login ended, for peers that merge it before the tombstones (empty: none).
            setHandles(&session, Self.endsAttribute, evicted + (change.id.map { [$0] } ?? []))
            setHandles(&session, Self.evictsAttribute, evicted)
            _ = session.set(SessionPrincipal.attribute, principalJSON, at: hlc.now())
            if let client = change.client {
                _ = session.set(SessionPrincipal.clientAttribute, SessionPrincipal.json(client), at: hlc.now())
            } else if session.attributes[SessionPrincipal.clientAttribute]?.base != nil {
                _ = session.remove(SessionPrincipal.clientAttribute, at: hlc.now())
            }
            if let nodeJSON { _ = session.set(Self.nodeAttribute, nodeJSON, at: hlc.now()) }
        } else {
            for name in [
                SessionPrincipal.attribute, SessionPrincipal.clientAttribute, Self.nodeAttribute, Self.evictsAttribute,
                Self.endsAttribute,
            ]
            where session.attributes[name]?.base != nil {
                _ = session.remove(name, at: hlc.now())
            }
        }
        contents[change.newID] = session
        recordEvictions(named: session, in: &contents, now: now)
        updates.append(SessionUpdate(id: change.newID, session: session))
        return updates
    }

    public func sessions(ofPrincipal principal: String) throws -> [PrincipalSessionEntry] {
        try checkReady()
        let now = clock.nowMillis()
        let json = SessionPrincipal.json(principal)
        defer { deliverEvents() }
        return contents.withLock { liveSessions(json, in: &$0, now: now) }
            .map { id, session in
                PrincipalSessionEntry(
                    id: id, createdAtMillis: session.createdAtMillis, lastAccessedAtMillis: session.lastAccessMillis,
                    node: session.attributes[Self.nodeAttribute]?.base.flatMap(decodeJSONString),
                    client: session.attributes[SessionPrincipal.clientAttribute]?.base.flatMap(decodeJSONString))
            }
            .sorted { ($0.createdAtMillis, $0.id.rawValue) < ($1.createdAtMillis, $1.id.rawValue) }
    }

    /// The live sessions of the principal with this JSON (expired ones are removed on the way).
    func liveSessions(_ principalJSON: [UInt8], in contents: inout Contents, now: Int64) -> [(id: SessionID, session: ReplicatedSession)] {
        (contents.principals[principalJSON] ?? []).compactMap { id in live(&contents, id, now: now).map { (id, $0) } }
    }

    /// Invalidates a live session under the lock; returns its tombstone's update.
    func invalidateLocked(_ id: SessionID, in contents: inout Contents, now: Int64) -> SessionUpdate {
        var session = contents.sessions[id]!
        session.touch(nowMillis: now)
        session.invalidate(at: hlc.now())
        contents[id] = session
        return SessionUpdate(id: id, session: session)
    }

    /// After a merge of `update`: ends, here only, what logins ended (their `ends`), whichever of
    /// a login and the sessions it ended arrived first. Their own tombstones follow from the node
    /// that logged in. Only a login's update carries `ends`: other merges pay one lookup, and only
    /// for logged-in sessions while some login's `ends` are remembered.
    func settlePrincipal(after update: SessionUpdate, in contents: inout Contents, now: Int64) {
        let named = Self.ends(of: update.state).filter { contents.endedHandles.updateValue(now, forKey: $0) == nil }
        if !named.isEmpty, let principalJSON = update.state.attributes[SessionPrincipal.attribute]?.base {
            let ended = Set(named)
            for id in contents.principals[principalJSON] ?? [] where ended.contains(SessionHandle(of: id).rawValue) {
                if live(&contents, id, now: now) != nil { _ = invalidateLocked(id, in: &contents, now: now) }
            }
        }
        guard !contents.endedHandles.isEmpty, let session = contents.sessions[update.id],
            Contents.principalKey(session) != nil, contents.endedHandles[SessionHandle(of: update.id).rawValue] != nil,
            live(&contents, update.id, now: now) != nil
        else { return }
        _ = invalidateLocked(update.id, in: &contents, now: now)
    }

    /// Whether `session` belongs to a principal with more unexpired sessions than the limit and
    /// is not among its `maxSessions` most recent logins (ties: the larger stamp wins).
    func isOverLimit(_ session: ReplicatedSession, _ contents: Contents, now: Int64) -> Bool {
        guard let limit = principalLimit, let principalJSON = Contents.principalKey(session),
            let ids = contents.principals[principalJSON], ids.count > limit.maxSessions,
            let login = session.attributes[SessionPrincipal.attribute]?.epoch
        else { return false }
        var newer = 0
        for id in ids {
            guard let other = contents.sessions[id], !isExpired(other, now: now),
                let otherLogin = other.attributes[SessionPrincipal.attribute]?.epoch, otherLogin > login
            else { continue }
            newer += 1
            if newer >= limit.maxSessions { return true }
        }
        return false
    }

    /// How long a session must stay over its principal's limit before its owner ends it.
    public static let overLimitSettleMillis: Int64 = 1_000

    /// At a sweep: the sessions over their principal's limit that this node owns (the expiry
    /// owner, `ReplicatedSessionStore+Events`) and that have been over it for
    /// `overLimitSettleMillis` — long enough for every login of the moment to have been merged
    /// everywhere — are invalidated and reported `evicted`, once per cluster. Then delivers the
    /// sweep's events.
    func settleOverLimit(now: Int64) {
        guard let limit = principalLimit else { return deliverEvents() }
        let members = liveMembers?()
        let me = hlc.node
        var updates: [SessionUpdate] = []
        var evicted: [PendingEvent] = []
        contents.withLock { contents in
            var stillOver: [SessionID: Int64] = [:]
            for (principalJSON, ids) in contents.principals where ids.count > limit.maxSessions {
                for id in ids {
                    let handle = SessionHandle(of: id)
                    guard let session = contents.sessions[id], !isExpired(session, now: now),
                        isOverLimit(session, contents, now: now),
                        members.map({ Self.owner(of: handle, among: $0) == me }) ?? true
                    else { continue }
                    let since = contents.overLimitSince[id] ?? now
                    if now - since >= Self.overLimitSettleMillis {
                        updates.append(invalidateLocked(id, in: &contents, now: now))
                        if contents.evictionsSeen.updateValue(now, forKey: handle.rawValue) == nil {
                            evicted.append(PendingEvent(kind: .evicted, handle: handle, principal: decodeJSONString(principalJSON)))
                        }
                    } else {
                        stillOver[id] = since
                    }
                }
            }
            contents.overLimitSince = stillOver
        }
        if !updates.isEmpty { emit(updates) }
        deliverEvents(evicted)
    }

    /// Sets `attribute` to the handles of `ids` as a JSON array, or removes it when there are none.
    private func setHandles(_ session: inout ReplicatedSession, _ attribute: String, _ ids: [SessionID]) {
        if ids.isEmpty {
            if session.attributes[attribute]?.base != nil { _ = session.remove(attribute, at: hlc.now()) }
            return
        }
        let list = ids.map { jsonQuoted(SessionHandle(of: $0).rawValue) }.joined(separator: ",")
        _ = session.set(attribute, Array("[\(list)]".utf8), at: hlc.now())
    }

    /// The handles a session's login evicted.
    static func evicts(of session: ReplicatedSession) -> [String] { handles(session, evictsAttribute) }

    /// The handles a session's login ended (evicted, and its own old ID).
    static func ends(of session: ReplicatedSession) -> [String] { handles(session, endsAttribute) }

    private static func handles(_ session: ReplicatedSession, _ attribute: String) -> [String] {
        guard let bytes = session.attributes[attribute]?.base else { return [] }
        return (try? JSONDecoder().decode([String].self, from: Data(bytes))) ?? []
    }
}
