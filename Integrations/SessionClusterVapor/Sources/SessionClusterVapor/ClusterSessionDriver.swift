import NIOConcurrencyHelpers
import SessionClusterAsync
import SessionCore
import Vapor

/// A Vapor `SessionDriver` backed by a SessionCluster store: memory, Redis
/// (`RedisSessionStore`) or replicated between nodes
/// (`ReplicatedSessionStore`). An app using Vapor's `SessionsMiddleware`
/// (`req.session.data[...]`) moves its sessions to a cluster by changing
/// the driver:
///
/// ```swift
/// // app.sessions.use(.memory)
/// app.sessions.use(.cluster(store: store))  // or: try .cluster(store: store, signingKeys: keys)
/// app.middleware.use(app.sessions.middleware)
/// ```
///
/// - IDs are the core's (32 random bytes, base64url); an ID the store does
///   not know is never adopted (Vapor then starts a new session). With
///   signing keys (`SessionCookieCodec`: the first signs, all verify) the
///   cookie carries an HMAC of the ID, so forged IDs are refused without a
///   store lookup.
/// - A new ID at login and logout (no session fixation): Vapor's session
///   authentication keeps the logged-in user under the data key
///   `"_" + A.sessionName + "Session"` (`req.session.authenticate(user)`
///   sets `_UserSession`). When a request adds, changes or removes such a
///   key (compared with what it read), the update moves the session to a new
///   ID (`SessionStore.regenerate`: the old ID stops working at once), then
///   writes the request's changes under the new ID, and Vapor sets the new
///   cookie. An app that logs users in without Vapor's authenticators asks
///   for the same with `req.regenerateClusterSessionID()`.
/// - Each key of `SessionData` is one attribute, stored as a JSON string
///   (`redis-cli HGETALL` shows it). An update writes only the keys the
///   request changed or removed (compared with what it read), so two
///   requests of one user on two nodes do not undo each other's changes to
///   different keys. Attributes written by `ClusterSession` with other JSON
///   types appear in `SessionData` as their JSON text.
/// - Updates and deletes touch only the session the request read under its
///   cookie; an entry of a key/value view over the same store
///   (`SessionKeyValueStore`, e.g. Hummingbird's persist driver), whose ID
///   anyone who knows its key can compute, is never read as a session.
/// - A session that expired during the request is started anew under a new
///   ID (Vapor sets the new cookie).
/// - Every store call runs on a `BlockingExecutor`, never on an event loop.
/// - Store failures are thrown as `ClusterSessionAbort` (503, or 413 for a
///   session over the size cap).
///
/// Vapor's default cookie factory (`SessionsConfiguration.default()`) does
/// not set `HttpOnly`; `SessionsConfiguration.cluster()` does.
public struct ClusterSessionDriver: AsyncSessionDriver {
    /// Where sessions live.
    public let store: any SessionStore
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// Signs and verifies the cookie's value (the core's codec).
    public let cookieCodec: SessionCookieCodec

    /// A driver over `store`, with cookies signed and verified by `cookieCodec`.
    ///
    /// - Parameters:
    ///   - store: where the sessions live (memory, Redis or replicated).
    ///   - executor: where the blocking store calls run (default: the shared 64-thread pool).
    ///   - cookieCodec: the signing keys (the first signs, all verify); default: unsigned IDs.
    public init(
        store: any SessionStore, executor: BlockingExecutor = .shared, cookieCodec: SessionCookieCodec = .unsigned
    ) {
        self.store = store
        self.executor = executor
        self.cookieCodec = cookieCodec
    }

    /// A driver over `store` whose session IDs carry an HMAC-SHA256 with
    /// `signingKeys` (the first signs, all verify: rotation; none: unsigned).
    /// Throws for a key shorter than 16 bytes (32 recommended).
    public init(store: any SessionStore, executor: BlockingExecutor = .shared, signingKeys: [[UInt8]])
        throws(SigningKeyError)
    {
        self.init(store: store, executor: executor, cookieCodec: try SessionCookieCodec(signingKeys: signingKeys))
    }

    /// A driver over `store` with the cookie signing of `sessions` (the core's configuration).
    public init(store: any SessionStore, executor: BlockingExecutor = .shared, sessions: SessionConfiguration) {
        self.init(store: store, executor: executor, cookieCodec: sessions.cookieCodec)
    }

    public func createSession(_ data: SessionData, for request: Request) async throws -> Vapor.SessionID {
        let id = SessionCore.SessionID.generate()
        let attributes = data.snapshot.mapValues(Self.jsonString)
        let changes = attributes.sorted { $0.key < $1.key }.map { SessionChange.set($0.key, $0.value) }
        let store = store
        try await run {
            guard try store.apply(SessionDelta(id: id, changes: changes, createIfMissing: true)) != nil else {
                throw SessionStoreError(.unavailable, "store refused to create a session")
            }
        }
        request.storage[LoadedSessionKey.self] = LoadedSession(id: id, attributes: attributes)
        request.storage[RegenerateSessionIDKey.self] = nil  // a new ID already
        return Vapor.SessionID(string: cookieCodec.value(for: id))
    }

    public func readSession(_ sessionID: Vapor.SessionID, for request: Request) async throws -> SessionData? {
        guard let id = cookieCodec.verifiedID(sessionID.string) else { return nil }
        let store = store
        guard let snapshot = try await run({ try store.load(id) }) else { return nil }
        // A key/value entry's ID can be computed from its key: it is no session.
        guard !snapshot.isKeyValueEntry else { return nil }
        request.storage[LoadedSessionKey.self] = LoadedSession(id: id, attributes: snapshot.attributes)
        return SessionData(initialData: snapshot.attributes.mapValues(Self.text))
    }

    public func updateSession(_ sessionID: Vapor.SessionID, to data: SessionData, for request: Request) async throws
        -> Vapor.SessionID
    {
        // Only the session this request read under its cookie is written (never an ID set by other means).
        guard let id = cookieCodec.verifiedID(sessionID.string),
            let loaded = request.storage[LoadedSessionKey.self], loaded.id == id
        else { return try await createSession(data, for: request) }
        let current = data.snapshot
        var changes: [SessionChange] = []
        for (key, value) in current.sorted(by: { $0.key < $1.key })
        where loaded.attributes[key].map(Self.text) != value {
            changes.append(.set(key, Self.jsonString(value)))
        }
        for key in loaded.attributes.keys.sorted() where current[key] == nil {
            changes.append(.remove(key))
        }
        let rotate =
            request.storage[RegenerateSessionIDKey.self] == true
            || changes.contains { Self.isAuthenticationKey($0.attribute) }
        request.storage[RegenerateSessionIDKey.self] = nil
        // Nothing changed: the read already refreshed the idle timer.
        guard !changes.isEmpty || rotate else { return sessionID }
        var target = id
        if rotate {
            // Login or logout: the session moves to a new ID before the change is written, so
            // an ID planted on (or leaked by) the client never carries the authenticated state.
            let (store, newID) = (store, SessionCore.SessionID.generate(slotTag: id.slotTag))  // one slot: an atomic move
            guard try await run({ try store.regenerate(id, to: newID) }) else {
                // Expired during the request: never revive the ID, start anew.
                return try await createSession(data, for: request)
            }
            target = newID
        }
        if !changes.isEmpty {
            let (store, delta) = (store, SessionDelta(id: target, changes: changes))
            guard try await run({ try store.apply(delta) }) != nil else {
                // Expired during the request: never revive the ID, start anew.
                return try await createSession(data, for: request)
            }
        }
        var attributes = loaded.attributes
        for change in changes {
            if case .set(let key, let bytes) = change { attributes[key] = bytes }
            if case .remove(let key) = change { attributes[key] = nil }
        }
        request.storage[LoadedSessionKey.self] = LoadedSession(id: target, attributes: attributes)
        return target == id ? sessionID : Vapor.SessionID(string: cookieCodec.value(for: target))
    }

    public func deleteSession(_ sessionID: Vapor.SessionID, for request: Request) async throws {
        // Only the session this request read under its cookie is deleted: Vapor deletes the
        // cookie's ID even when no session was found under it.
        guard let id = cookieCodec.verifiedID(sessionID.string),
            let loaded = request.storage[LoadedSessionKey.self], loaded.id == id
        else { return }
        let store = store
        try await run { try store.invalidate(id) }
        request.storage[LoadedSessionKey.self] = nil
    }

    /// Whether a `SessionData` key is where Vapor's session authentication keeps a
    /// logged-in user: `"_" + A.sessionName + "Session"` (`Session.authenticate(_:)`).
    public static func isAuthenticationKey(_ key: String) -> Bool {
        key.count > "_Session".count && key.hasPrefix("_") && key.hasSuffix("Session")
    }

    /// Runs a store call on the executor; store errors become `ClusterSessionAbort`.
    private func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await executor.run(body)
        } catch {
            if let answer = SessionErrorAnswer.from(error) { throw ClusterSessionAbort(answer) }
            throw error
        }
    }

    /// A `SessionData` value as stored: a JSON string.
    static func jsonString(_ value: String) -> [UInt8] {
        (try? Array(JSONEncoder().encode(value))) ?? Array("\"\"".utf8)  // a String always encodes
    }

    /// A stored attribute as a `SessionData` value: a JSON string's text, any other JSON as it is.
    static func text(_ bytes: [UInt8]) -> String {
        if bytes.first == UInt8(ascii: "\""), let string = try? JSONDecoder().decode(String.self, from: Data(bytes)) {
            return string
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// What a request read of its session, to write back only what changed.
struct LoadedSession: Sendable {
    var id: SessionCore.SessionID
    var attributes: [String: [UInt8]]
}

enum LoadedSessionKey: StorageKey {
    typealias Value = LoadedSession
}

enum RegenerateSessionIDKey: StorageKey {
    typealias Value = Bool
}

extension Request {
    /// Asks `ClusterSessionDriver` for a new session ID when it saves this
    /// request's session (`req.session`), as at login: the session's data
    /// moves to the new ID, the old ID stops working, and Vapor sets the new
    /// cookie. The driver does this by itself when Vapor's session
    /// authentication (`req.session.authenticate(user)`, the session
    /// authenticators) logs a user in or out; call this where an app logs
    /// users in by other means (e.g. `req.session.data["user"] = name`).
    public func regenerateClusterSessionID() {
        storage[RegenerateSessionIDKey.self] = true
    }
}

/// A store failure as a Vapor error: Vapor's `ErrorMiddleware` answers it
/// with its status (503 with `Retry-After` for an unavailable store, 413 for
/// a session over the size cap) and its message.
public struct ClusterSessionAbort: AbortError, Sendable {
    /// The core's answer.
    public let answer: SessionErrorAnswer

    /// Wraps an answer.
    public init(_ answer: SessionErrorAnswer) { self.answer = answer }

    public var status: HTTPResponseStatus { HTTPResponseStatus(statusCode: answer.status) }
    public var reason: String { "\(answer.code): \(answer.message)" }
    public var headers: HTTPHeaders {
        HTTPHeaders(answer.headers.filter { $0.name.lowercased() != "content-type" }.map { ($0.name, $0.value) })
    }
}

extension Application.Sessions.Provider {
    /// Sessions in a SessionCluster store, with cookies signed and verified by
    /// `cookieCodec` (default: unsigned): `app.sessions.use(.cluster(store: store))`.
    public static func cluster(
        store: any SessionStore, executor: BlockingExecutor = .shared, cookieCodec: SessionCookieCodec = .unsigned
    ) -> Self {
        .init { app in
            app.sessions.use { _ in ClusterSessionDriver(store: store, executor: executor, cookieCodec: cookieCodec) }
        }
    }

    /// Sessions in a SessionCluster store, with cookies signed by the first
    /// of `signingKeys` and verified by all of them (none: unsigned):
    /// `app.sessions.use(try .cluster(store: store, signingKeys: keys))`.
    /// Throws for a key shorter than 16 bytes.
    public static func cluster(
        store: any SessionStore, executor: BlockingExecutor = .shared, signingKeys: [[UInt8]]
    ) throws(SigningKeyError) -> Self {
        cluster(store: store, executor: executor, cookieCodec: try SessionCookieCodec(signingKeys: signingKeys))
    }
}

extension SessionsConfiguration {
    /// Cookies as the core middleware sets them: `HttpOnly; SameSite=Lax; Path=/`,
    /// `Secure` when asked, no `Expires` (the store's expiry decides).
    public static func cluster(cookieName: String = "vapor-session", secure: Bool = false) -> SessionsConfiguration {
        SessionsConfiguration(cookieName: cookieName) { id in
            HTTPCookies.Value(
                string: id.string, expires: nil, maxAge: nil, domain: nil, path: "/", isSecure: secure,
                isHTTPOnly: true, sameSite: .lax)
        }
    }
}
