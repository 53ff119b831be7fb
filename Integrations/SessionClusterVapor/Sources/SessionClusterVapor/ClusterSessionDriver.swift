import NIOConcurrencyHelpers
import SessionClusterAsync
import SessionCore
import SessionMiddleware
import Vapor

/// A Vapor `SessionDriver` backed by a SessionCluster store: memory, Redis
/// (`RedisSessionStore`) or replicated between nodes
/// (`ReplicatedSessionStore`). An app using Vapor's `SessionsMiddleware`
/// (`req.session.data[...]`) moves its sessions to a cluster by changing
/// the driver:
///
/// ```swift
/// // app.sessions.use(.memory)
/// app.sessions.use { _ in ClusterSessionDriver(store: store) }
/// app.middleware.use(app.sessions.middleware)
/// ```
///
/// - IDs are the core's (32 random bytes, base64url); an ID the store does
///   not know is never adopted (Vapor then starts a new session). With a
///   `signingKey` the cookie carries an HMAC of the ID, so forged IDs are
///   refused without a store lookup.
/// - Each key of `SessionData` is one attribute, stored as a JSON string
///   (`redis-cli HGETALL` shows it). An update writes only the keys the
///   request changed or removed (compared with what it read), so two
///   requests of one user on two nodes do not undo each other's changes to
///   different keys. Attributes written by `ClusterSession` with other JSON
///   types appear in `SessionData` as their JSON text.
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
    /// The core's cookie codec (signing).
    let codec: SessionMiddleware

    /// A driver over `store`.
    ///
    /// - Parameters:
    ///   - executor: where the blocking store calls run (default: the shared 64-thread pool).
    ///   - signingKey: when set, session IDs carry an HMAC-SHA256 (16+ bytes recommended: 32).
    public init(store: any SessionStore, executor: BlockingExecutor = .shared, signingKey: [UInt8]? = nil) {
        self.store = store
        self.executor = executor
        codec = SessionMiddleware(
            store: store, configuration: SessionConfiguration(signingKey: signingKey),
            logger: Logger(label: "session-cluster.vapor"))
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
        return Vapor.SessionID(string: codec.cookieValue(for: id))
    }

    public func readSession(_ sessionID: Vapor.SessionID, for request: Request) async throws -> SessionData? {
        guard let id = codec.verifiedID(sessionID.string) else { return nil }
        let store = store
        guard let snapshot = try await run({ try store.load(id) }) else { return nil }
        request.storage[LoadedSessionKey.self] = LoadedSession(id: id, attributes: snapshot.attributes)
        return SessionData(initialData: snapshot.attributes.mapValues(Self.text))
    }

    public func updateSession(_ sessionID: Vapor.SessionID, to data: SessionData, for request: Request) async throws
        -> Vapor.SessionID
    {
        guard let id = codec.verifiedID(sessionID.string) else { return try await createSession(data, for: request) }
        let loaded = request.storage[LoadedSessionKey.self].flatMap { $0.id == id ? $0 : nil }
        let current = data.snapshot
        var changes: [SessionChange] = []
        for (key, value) in current.sorted(by: { $0.key < $1.key })
        where loaded?.attributes[key].map(Self.text) != value {
            changes.append(.set(key, Self.jsonString(value)))
        }
        for key in (loaded?.attributes.keys).map(Array.init) ?? [] where current[key] == nil {
            changes.append(.remove(key))
        }
        guard !changes.isEmpty else { return sessionID }  // nothing changed: the read already refreshed the idle timer
        let (store, delta) = (store, SessionDelta(id: id, changes: changes))
        let applied = try await run { try store.apply(delta) }
        guard applied != nil else {
            // Expired during the request: never revive the ID, start anew.
            return try await createSession(data, for: request)
        }
        var attributes = loaded?.attributes ?? [:]
        for change in changes {
            if case .set(let key, let bytes) = change { attributes[key] = bytes }
            if case .remove(let key) = change { attributes[key] = nil }
        }
        request.storage[LoadedSessionKey.self] = LoadedSession(id: id, attributes: attributes)
        return sessionID
    }

    public func deleteSession(_ sessionID: Vapor.SessionID, for request: Request) async throws {
        guard let id = codec.verifiedID(sessionID.string) else { return }
        let store = store
        try await run { try store.invalidate(id) }
        request.storage[LoadedSessionKey.self] = nil
    }

    /// Runs a store call on the executor; store errors become `ClusterSessionAbort`.
    private func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await executor.run(body)
        } catch {
            if let answer = SessionErrorResponse.from(error) { throw ClusterSessionAbort(answer) }
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

/// A store failure as a Vapor error: Vapor's `ErrorMiddleware` answers it
/// with its status (503 with `Retry-After` for an unavailable store, 413 for
/// a session over the size cap) and its message.
public struct ClusterSessionAbort: AbortError, Sendable {
    /// The core's answer.
    public let answer: SessionErrorResponse

    /// Wraps an answer.
    public init(_ answer: SessionErrorResponse) { self.answer = answer }

    public var status: HTTPResponseStatus { HTTPResponseStatus(statusCode: answer.status) }
    public var reason: String { "\(answer.code): \(answer.message)" }
    public var headers: HTTPHeaders {
        HTTPHeaders(answer.headers.filter { $0.name.lowercased() != "content-type" }.map { ($0.name, $0.value) })
    }
}

extension Application.Sessions.Provider {
    /// Sessions in a SessionCluster store: `app.sessions.use(.cluster(store: store))`.
    public static func cluster(
        store: any SessionStore, executor: BlockingExecutor = .shared, signingKey: [UInt8]? = nil
    ) -> Self {
        .init { app in
            app.sessions.use { _ in ClusterSessionDriver(store: store, executor: executor, signingKey: signingKey) }
        }
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
