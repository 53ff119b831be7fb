import SystemSupport

/// The JSON answers of a "your devices" API over a request's `Session`, with
/// no transport: the demo node and the Hummingbird and Vapor examples each
/// route them (`GET /api/sessions`, `POST /api/sessions/revoke-others`,
/// `DELETE /api/sessions/{handle}`). Each call blocks on the store.
public struct PrincipalSessionsAnswer: Sendable, Equatable {
    /// The HTTP status.
    public var status: Int
    /// The JSON body.
    public var body: String
    /// How many sessions the user holds, for a listing.
    public var sessionCount: Int?

    init(status: Int, body: String, sessionCount: Int? = nil) {
        self.status = status
        self.body = body
        self.sessionCount = sessionCount
    }

    /// `{"node", "user", "sessions": [{"handle", "createdAt", "lastAccess", "node", "client", "current"}]}`
    /// (times in ms since 1970), or 401 `not_logged_in`.
    public static func list(_ session: Session, node: String) throws -> PrincipalSessionsAnswer {
        guard let user = session.principal, let sessions = try session.principalSessions() else { return notLoggedIn }
        let list = sessions.map(json).joined(separator: ",")
        return PrincipalSessionsAnswer(
            status: 200, body: "{\"node\":\(jsonQuoted(node)),\"user\":\(jsonQuoted(user)),\"sessions\":[\(list)]}",
            sessionCount: sessions.count)
    }

    /// Ends every other session of the user: `{"node", "revoked": N}`, or 401.
    public static func revokeOthers(_ session: Session, node: String) throws -> PrincipalSessionsAnswer {
        guard session.principal != nil else { return notLoggedIn }
        let revoked = try session.invalidateOtherPrincipalSessions()
        return PrincipalSessionsAnswer(status: 200, body: "{\"node\":\(jsonQuoted(node)),\"revoked\":\(revoked)}")
    }

    /// Ends the user's session with the handle `text`: `{"node", "revoked": 1}`; 404
    /// `no_such_session` for a handle that is not one of the user's sessions; 401 when not logged in.
    public static func revoke(_ session: Session, handle text: String, node: String) throws -> PrincipalSessionsAnswer {
        guard session.principal != nil else { return notLoggedIn }
        guard let handle = SessionHandle(rawValue: text), try session.invalidatePrincipalSession(handle) else {
            return error(404, "no_such_session", "you have no session with that handle")
        }
        return PrincipalSessionsAnswer(status: 200, body: "{\"node\":\(jsonQuoted(node)),\"revoked\":1}")
    }

    /// `{"node", "user", "events": [{"kind", "handle", "previous", "at"}]}`: of `recent`, those of the
    /// session's user, or 401 `not_logged_in`.
    public static func events(_ session: Session, recent: [SessionEvent], node: String) -> PrincipalSessionsAnswer {
        guard let user = session.principal else { return notLoggedIn }
        let list = recent.filter { $0.principal == user }.map { event in
            "{\"kind\":\"\(event.kind.rawValue)\",\"handle\":\(jsonQuoted(event.handle.rawValue)),"
                + "\"previous\":\(event.previous.map { jsonQuoted($0.rawValue) } ?? "null"),\"at\":\(event.atMillis)}"
        }
        return PrincipalSessionsAnswer(
            status: 200,
            body: "{\"node\":\(jsonQuoted(node)),\"user\":\(jsonQuoted(user)),\"events\":[\(list.joined(separator: ","))]}")
    }

    static let notLoggedIn = error(401, "not_logged_in", "log in first (POST /api/login)")

    static func error(_ status: Int, _ code: String, _ message: String) -> PrincipalSessionsAnswer {
        let answer = SessionErrorAnswer(status: status, code: code, message: message)
        return PrincipalSessionsAnswer(status: status, body: String(decoding: answer.body, as: UTF8.self))
    }

    static func json(_ info: PrincipalSessionInfo) -> String {
        "{\"handle\":\(jsonQuoted(info.handle.rawValue)),\"createdAt\":\(info.createdAtMillis),"
            + "\"lastAccess\":\(info.lastAccessedAtMillis),\"node\":\(info.node.map(jsonQuoted) ?? "null"),"
            + "\"client\":\(info.client.map(jsonQuoted) ?? "null"),\"current\":\(info.current)}"
    }
}
