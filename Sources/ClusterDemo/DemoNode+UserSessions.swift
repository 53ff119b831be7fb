import MiniHTTP
import SessionCore
import SystemSupport

/// "Your devices": the sessions of the logged-in user, and logging them out.
///
/// - `GET /api/sessions` → `{"user": U, "sessions": [{"handle", "createdAt", "lastAccess", "node",
///   "client", "current"}]}` (times in ms since 1970; a handle names a session without being its ID);
/// - `POST /api/sessions/revoke-others` → `{"revoked": N}`: every other session of the user ends;
/// - `DELETE /api/sessions/{handle}` → `{"revoked": 1}`; 404 for a handle that is not one of the
///   user's sessions.
///
/// Each answers 401 `not_logged_in` to a request without a logged-in session.
extension DemoNode {
    static func routeUserSessions(_ api: inout Router, nodeID: String, metrics: NodeMetrics) {
        api.get("/api/sessions") { request in
            let session = try request.session()
            guard let user = session.principal, let sessions = try session.principalSessions() else {
                return notLoggedIn()
            }
            metrics.recordPrincipalSessions(sessions.count)
            let list = sessions.map(json).joined(separator: ",")
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"user\":\(jsonQuoted(user)),\"sessions\":[\(list)]}")
        }
        api.post("/api/sessions/revoke-others") { request in
            let session = try request.session()
            guard session.principal != nil else { return notLoggedIn() }
            let revoked = try session.invalidateOtherPrincipalSessions()
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"revoked\":\(revoked)}")
        }
        api.delete("/api/sessions/*") { request in
            let session = try request.session()
            guard session.principal != nil else { return notLoggedIn() }
            let text = String(request.path.dropFirst("/api/sessions/".count))
            guard let handle = SessionHandle(rawValue: text), try session.invalidatePrincipalSession(handle) else {
                return .error(status: 404, code: "no_such_session", message: "you have no session with that handle")
            }
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"revoked\":1}")
        }
    }

    private static func notLoggedIn() -> HTTPResponse {
        .error(status: 401, code: "not_logged_in", message: "log in first (POST /api/login)")
    }

    private static func json(_ info: PrincipalSessionInfo) -> String {
        "{\"handle\":\(jsonQuoted(info.handle.rawValue)),\"createdAt\":\(info.createdAtMillis),"
            + "\"lastAccess\":\(info.lastAccessedAtMillis),\"node\":\(info.node.map(jsonQuoted) ?? "null"),"
            + "\"client\":\(info.client.map(jsonQuoted) ?? "null"),\"current\":\(info.current)}"
    }
}
