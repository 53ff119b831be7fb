import MiniHTTP
import SessionCore

/// "Your devices" (`PrincipalSessionsAnswer`): `GET /api/sessions`,
/// `POST /api/sessions/revoke-others`, `DELETE /api/sessions/{handle}`.
extension DemoNode {
    static func routeUserSessions(_ api: inout Router, nodeID: String, metrics: NodeMetrics) {
        api.get("/api/sessions") { request in
            let answer = try PrincipalSessionsAnswer.list(try request.session(), node: nodeID)
            if let count = answer.sessionCount { metrics.recordPrincipalSessions(count) }
            return response(answer)
        }
        api.post("/api/sessions/revoke-others") { request in
            response(try PrincipalSessionsAnswer.revokeOthers(try request.session(), node: nodeID))
        }
        api.delete("/api/sessions/*") { request in
            let handle = String(request.path.dropFirst("/api/sessions/".count))
            return response(try PrincipalSessionsAnswer.revoke(try request.session(), handle: handle, node: nodeID))
        }
    }

    private static func response(_ answer: PrincipalSessionsAnswer) -> HTTPResponse {
        .json(answer.body, status: answer.status)
    }
}
