import SessionCore

/// The session of one request, for async handlers: the core's `Session`
/// (typed attributes, per-attribute deltas, atomic `increment`,
/// `regenerateID`, `invalidate`) with every call that reaches the store run
/// on a `BlockingExecutor`.
///
/// Reads and writes of attributes only touch this request's copy and do not
/// block; they are saved, as per-attribute changes, after the handler
/// returns. `increment`, `regenerateID` and `invalidate` go to the store at
/// once, so they are `async`.
public final class ClusterSession: Sendable {
    /// The core session underneath (its store-touching methods block: call
    /// them only from a blocking context).
    public let core: Session
    /// Where the store calls run.
    public let executor: BlockingExecutor

    /// Wraps a core session.
    public init(core: Session, executor: BlockingExecutor) {
        self.core = core
        self.executor = executor
    }

    /// The ID, or nil while no session exists for this client.
    public var id: SessionID? { core.id }

    /// Whether the session holds no attributes.
    public var isEmpty: Bool { core.isEmpty }

    /// The names of the attributes, sorted.
    public var attributeNames: [String] { core.attributeNames }

    /// The attribute decoded as `T`, or nil when absent. Throws
    /// `SessionStoreError(.invalidValue)` when it does not decode.
    public func get<T: Decodable>(_ name: String, as type: T.Type = T.self) throws -> T? {
        try core.get(name, as: type)
    }

    /// The raw JSON bytes of an attribute.
    public func rawValue(_ name: String) -> [UInt8]? { core.rawValue(name) }

    /// Sets an attribute; only this attribute is written, after the handler.
    public func set<T: Encodable>(_ name: String, _ value: T) throws {
        try core.set(name, value)
    }

    /// Removes an attribute (saved after the handler).
    public func remove(_ name: String) {
        core.remove(name)
    }

    /// Atomically adds `amount` to an integer attribute in the store and
    /// returns the new value; creates the session when there is none.
    /// Concurrent increments on any node are never lost.
    ///
    /// On a request with an `Idempotency-Key` the increment is held and
    /// written with the request's other changes and its idempotency record
    /// in one atomic step (see the core's `Session.deferWrites`).
    @discardableResult
    public func increment(_ name: String, by amount: Int64 = 1) async throws -> Int64 {
        let core = core
        if core.deferWrites { return try core.increment(name, by: amount) }  // no store call until commit
        return try await executor.run { try core.increment(name, by: amount) }
    }

    /// Gives the session a new ID (call it at login, against session
    /// fixation); the old ID stops working at once.
    public func regenerateID() async throws {
        let core = core
        try await executor.run { try core.regenerateID() }
    }

    /// Deletes the session everywhere; the cookie is expired unless the
    /// request writes again (which starts a new session).
    public func invalidate() async throws {
        let core = core
        try await executor.run { try core.invalidate() }
    }

    // MARK: Sessions by user (the core's `Session+Principal`)

    /// The user the session is logged in as, or nil.
    public var principal: String? { core.principal }

    /// Logs the session in as `principal` under a new ID in the principal's slot, keeping its
    /// attributes; returns how many of the user's sessions the per-user limit ended. Throws
    /// `principalLimitReached` (409) under `refuseNewLogin`.
    @discardableResult
    public func logIn(as principal: String, client: String? = nil) async throws -> Int {
        let core = core
        return try await executor.run { try core.logIn(as: principal, client: client) }
    }

    /// Logs out but keeps the session (under a new ID); `invalidate()` ends it instead.
    public func logOut() async throws {
        let core = core
        try await executor.run { try core.logOut() }
    }

    /// Every live session of the user, this one marked `current`; nil when not logged in.
    public func principalSessions() async throws -> [PrincipalSessionInfo]? {
        let core = core
        return try await executor.run { try core.principalSessions() }
    }

    /// Ends the user's session that `handle` names; false when the user has none with it.
    public func invalidatePrincipalSession(_ handle: SessionHandle) async throws -> Bool {
        let core = core
        return try await executor.run { try core.invalidatePrincipalSession(handle) }
    }

    /// Ends every other session of the user; returns how many.
    @discardableResult
    public func invalidateOtherPrincipalSessions() async throws -> Int {
        let core = core
        return try await executor.run { try core.invalidateOtherPrincipalSessions() }
    }
}
