/// A store that passes every call to `base`, with a hook around the session
/// calls (`load`, `apply`, `regenerate`, `invalidate`): a wrapper that times
/// them, or delays them in a test, implements only `around`. Read tokens,
/// idempotency calls and principal listings go straight through; a login or
/// logout (`changePrincipal`) passes the hook as "changePrincipal".
public protocol WrappingSessionStore: ReadYourWritesStore, IdempotencyStore, PrincipalIndexedStore, SessionEventSource {
    /// The store underneath.
    var base: any SessionStore & IdempotencyStore { get }

    /// Runs `body` — the call `operation` (e.g. "load") on session `id` in `base` — and returns its result.
    func around<T>(_ operation: String, session id: SessionID, _ body: () throws -> T) throws -> T
}

extension WrappingSessionStore {
    public var expiry: SessionExpiry { base.expiry }

    public func load(_ id: SessionID) throws -> SessionSnapshot? { try around("load", session: id) { try base.load(id) } }

    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        try around("apply", session: delta.id) { try base.apply(delta) }
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        try around("regenerate", session: id) { try base.regenerate(id, to: newID) }
    }

    public func invalidate(_ id: SessionID) throws { try around("invalidate", session: id) { try base.invalidate(id) } }

    public func readToken(for id: SessionID) -> String? { (base as? any ReadYourWritesStore)?.readToken(for: id) }

    public func catchUp(_ id: SessionID, to token: String) throws -> Bool {
        try (base as? any ReadYourWritesStore)?.catchUp(id, to: token) ?? true
    }

    public func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim {
        try base.begin(key: key, fingerprint: fingerprint, inProgressMillis: inProgressMillis)
    }

    public func complete(_ record: IdempotencyRecord) throws { try base.complete(record) }

    public func abandon(key: String) throws { try base.abandon(key: key) }

    public var principalLimit: PrincipalSessionLimit? { (base as? any PrincipalIndexedStore)?.principalLimit }

    /// The base's events (every store of this package has them; another base's never fire).
    public var events: SessionEventHub { (base as? any SessionEventSource)?.events ?? SessionEventHub(node: nil) }

    public func changePrincipal(_ change: PrincipalChange) throws -> PrincipalChangeResult {
        try around("changePrincipal", session: change.newID) { try principalBase().changePrincipal(change) }
    }

    public func sessions(ofPrincipal principal: String) throws -> [PrincipalSessionEntry] {
        try principalBase().sessions(ofPrincipal: principal)
    }

    private func principalBase() throws(SessionStoreError) -> any PrincipalIndexedStore {
        guard let base = base as? any PrincipalIndexedStore else {
            throw SessionStoreError(.unsupported, "the store underneath does not index sessions by principal")
        }
        return base
    }
}
