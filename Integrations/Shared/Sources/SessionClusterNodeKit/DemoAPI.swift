#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SessionClusterAsync
import SessionCore
import SystemSupport

/// The demo node's API (`GET /api/session`, `POST /api/counter`,
/// `POST /api/login`, `POST /api/logout`, `GET /healthz`, and "your devices":
/// `GET /api/sessions`, `POST /api/sessions/revoke-others`,
/// `DELETE /api/sessions/{handle}`) as plain functions
/// over a `ClusterSession`, so the Hummingbird and Vapor examples answer
/// byte for byte like `session-cluster node`.
public enum DemoAPI {
    /// `{"node": ..., "count": N, "user": ... | null}`.
    public static func sessionJSON(node: String, session: ClusterSession) throws -> String {
        let count = try session.get("count", as: Int64.self) ?? 0
        let user = session.principal.map(jsonQuoted) ?? "null"
        return "{\"node\":\(jsonQuoted(node)),\"count\":\(count),\"user\":\(user)}"
    }

    /// `POST /api/counter`: increments `count` atomically; `{"node", "count"}`.
    public static func counter(node: String, session: ClusterSession) async throws -> String {
        let count = try await session.increment("count")
        return "{\"node\":\(jsonQuoted(node)),\"count\":\(count)}"
    }

    /// `POST /api/login` with `{"user": "name"}`: logs the session in as the user (a new ID),
    /// `client` describing the device (its `User-Agent`).
    /// Throws a 400 `SessionErrorAnswer` for a bad body.
    public static func login(
        node: String, body: [UInt8], client: String? = nil, session: () async throws -> ClusterSession
    ) async throws -> String {
        struct Login: Decodable { var user: String }
        guard let login = try? JSONDecoder().decode(Login.self, from: Data(body)) else {
            throw SessionErrorAnswer(
                status: 400, code: "bad_request", message: "expected a JSON body {\"user\": \"name\"}")
        }
        let user = String(login.user.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
        guard !user.isEmpty, user.utf8.count <= 64 else {
            throw SessionErrorAnswer(status: 400, code: "bad_request", message: "user must be 1 to 64 bytes")
        }
        let session = try await session()
        try await session.logIn(as: user, client: client ?? "unknown client")
        return try sessionJSON(node: node, session: session)
    }

    /// `POST /api/logout`: invalidates the session.
    public static func logout(node: String, session: ClusterSession) async throws -> String {
        try await session.invalidate()
        return "{\"node\":\(jsonQuoted(node)),\"count\":0,\"user\":null}"
    }

    /// `GET /api/sessions`: the user's sessions (`PrincipalSessionsAnswer.list`).
    public static func userSessions(node: String, session: ClusterSession) async throws -> PrincipalSessionsAnswer {
        try await session.executor.run { try PrincipalSessionsAnswer.list(session.core, node: node) }
    }

    /// `POST /api/sessions/revoke-others` (`PrincipalSessionsAnswer.revokeOthers`).
    public static func revokeOtherSessions(node: String, session: ClusterSession) async throws -> PrincipalSessionsAnswer {
        try await session.executor.run { try PrincipalSessionsAnswer.revokeOthers(session.core, node: node) }
    }

    /// `DELETE /api/sessions/{handle}` (`PrincipalSessionsAnswer.revoke`).
    public static func revokeSession(node: String, handle: String, session: ClusterSession) async throws
        -> PrincipalSessionsAnswer
    {
        try await session.executor.run { try PrincipalSessionsAnswer.revoke(session.core, handle: handle, node: node) }
    }

    /// `GET /healthz`: status and body. A draining node (a lame duck, see `LameDuck`)
    /// answers 503 `{"status":"draining","node":...}` whatever its `problem`, as
    /// `session-cluster node` does during its `--drain-delay-ms`.
    public static func health(node: String, problem: String?, draining: Bool = false) -> (status: Int, body: String) {
        if draining { return (503, "{\"status\":\"draining\",\"node\":\(jsonQuoted(node))}") }
        guard let problem else { return (200, "{\"status\":\"ok\",\"node\":\(jsonQuoted(node))}") }
        return (503, "{\"status\":\"unavailable\",\"node\":\(jsonQuoted(node)),\"reason\":\(jsonQuoted(problem))}")
    }
}
