/// Logging a session in and out, and the other sessions of its user.
///
/// These write to the store at once (not at commit), like `regenerateID()`:
/// login and logout each give the session a new ID, against session fixation.
extension Session {
    /// The principal the session is logged in as, or nil.
    public var principal: String? { try? get(SessionPrincipal.attribute, as: String.self) }

    /// The client description given at login, or nil.
    public var client: String? { try? get(SessionPrincipal.clientAttribute, as: String.self) }

    /// Logs the session in as `principal`, with a short `client` description
    /// (e.g. from `User-Agent`; sanitized and cut to 160 bytes). The session
    /// gets a new ID in the principal's slot (`SessionPrincipal.slotTag(of:)`)
    /// and keeps its attributes; a client without a session gets one.
    ///
    /// Under the store's `principalLimit`, the least recently used sessions of
    /// the principal are invalidated to make room (their number is returned),
    /// or, under `refuseNewLogin`, the login throws `principalLimitReached` (409)
    /// and nothing changes. Throws `unsupported` when the store does not index
    /// sessions by principal.
    @discardableResult
    public func logIn(as principal: String, client: String? = nil) throws -> Int {
        try SessionPrincipal.validate(principal)
        let store = try principalStore()
        let (old, exists) = state.withLock { ($0.id, $0.existsInStore) }
        let newID = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: principal))
        let change = PrincipalChange(id: exists ? old : nil, newID: newID, principal: principal, client: client)
        let result = try store.changePrincipal(change)
        state.withLock { s in
            s.attributes[SessionPrincipal.attribute] = SessionPrincipal.json(principal)
            s.attributes[SessionPrincipal.clientAttribute] = change.client.map(SessionPrincipal.json)
            moved(&s, to: newID)
        }
        return result.evicted.count
    }

    /// Logs the session out but keeps it (and its other attributes) under a new
    /// ID: the principal is cleared and the session leaves its user's list.
    /// To end the session instead, `invalidate()`. Nothing happens when it is
    /// not logged in.
    public func logOut() throws {
        let (old, exists) = state.withLock { ($0.id, $0.existsInStore) }
        guard let old, exists, principal != nil else { return }
        let store = try principalStore()
        let newID = SessionID.generate(slotTag: old.slotTag)
        _ = try store.changePrincipal(PrincipalChange(id: old, newID: newID, principal: nil))
        state.withLock { s in
            s.attributes[SessionPrincipal.attribute] = nil
            s.attributes[SessionPrincipal.clientAttribute] = nil
            moved(&s, to: newID)
        }
    }

    /// Every live session of this session's principal, this one marked
    /// `current`, oldest first; nil when the session is not logged in.
    public func principalSessions() throws -> [PrincipalSessionInfo]? {
        guard let principal else { return nil }
        let own = id
        return try principalStore().sessions(ofPrincipal: principal).map { PrincipalSessionInfo($0, current: $0.id == own) }
    }

    /// Invalidates the session of this session's principal that `handle` names
    /// (this one too: then it is invalidated as by `invalidate()`). False when
    /// the principal has no session with that handle — a handle of another
    /// user's session is never found — or when this session is not logged in.
    public func invalidatePrincipalSession(_ handle: SessionHandle) throws -> Bool {
        guard let principal else { return false }
        if let own = id, SessionHandle(of: own) == handle {
            try invalidate()
            return true
        }
        return try principalStore().invalidate(handle, ofPrincipal: principal)
    }

    /// Invalidates every other session of this session's principal ("log out
    /// everywhere else"); returns how many. 0 when not logged in.
    @discardableResult
    public func invalidateOtherPrincipalSessions() throws -> Int {
        guard let principal else { return 0 }
        return try principalStore().invalidateSessions(ofPrincipal: principal, except: id)
    }

    private func principalStore() throws(SessionStoreError) -> any PrincipalIndexedStore {
        guard let store = store as? any PrincipalIndexedStore else {
            throw SessionStoreError(.unsupported, "this session store does not index sessions by principal")
        }
        return store
    }

    private func moved(_ s: inout State, to newID: SessionID) {
        if newID.slotTag != s.slotTag { s.recordApart = true }
        s.id = newID
        s.slotTag = newID.slotTag
        s.existsInStore = true
        s.issueCookie = true
        s.expireCookie = false
        s.wroteToStore = true
    }
}
