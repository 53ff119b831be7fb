import Logging
import SessionClusterAsync
import SessionClusterNodeKit
import SessionClusterVapor
import SessionCore
import Vapor

/// The demo node's middleware and routes on a Vapor application, over any store.
struct DemoNodeRoutes: Sendable {
    let manager: SessionRequestManager

    /// Installs the lame duck's `Connection: close`, `X-Served-By`, error answers, idempotency,
    /// sessions and the routes on `app`.
    /// - Parameters:
    ///   - healthProblem: what keeps the node from serving (blocking; run on the executor), nil when ready.
    ///   - lameDuck: while it drains, `/healthz` answers 503 `draining` and every response carries `Connection: close`.
    init(
        app: Application, nodeID: String, store: any SessionStore & IdempotencyStore, executor: BlockingExecutor,
        sessions: SessionConfiguration, healthProblem: @escaping @Sendable () -> String? = { nil },
        lameDuck: LameDuck = LameDuck(delayMillis: 0), logger: Logger
    ) throws {
        manager = SessionRequestManager(store: store, configuration: sessions, executor: executor, logger: logger)
        app.middleware = Middlewares()
        app.middleware.use(LameDuckMiddleware(lameDuck: lameDuck))  // outermost: every answer
        app.middleware.use(ServedByMiddleware(nodeID: nodeID))  // error answers get it too
        app.middleware.use(ErrorMiddleware.default(environment: app.environment))
        app.middleware.use(
            ClusterIdempotencyMiddleware(store: store, sessions: sessions, executor: executor, logger: logger))
        app.middleware.use(ClusterSessionsMiddleware(manager: manager))

        app.get("healthz") { _ async throws -> Response in
            let draining = lameDuck.isDraining
            let problem = draining ? nil : try await executor.run { healthProblem() }
            let (status, body) = DemoAPI.health(node: nodeID, problem: problem, draining: draining)
            return Self.json(body, status: status)
        }
        app.get("api", "session") { req async throws -> Response in
            Self.json(try DemoAPI.sessionJSON(node: nodeID, session: try await req.clusterSession()))
        }
        app.post("api", "counter") { req async throws -> Response in
            Self.json(try await DemoAPI.counter(node: nodeID, session: try await req.clusterSession()))
        }
        app.on(.POST, "api", "login", body: .collect(maxSize: "16kb")) { req async throws -> Response in
            let body = req.body.data.map { Array($0.readableBytesView) } ?? []
            let client = req.headers.first(name: .userAgent)
            return Self.json(try await DemoAPI.login(node: nodeID, body: body, client: client) { try await req.clusterSession() })
        }
        app.get("api", "sessions") { req async throws -> Response in
            Self.json(try await DemoAPI.userSessions(node: nodeID, session: try await req.clusterSession()))
        }
        app.post("api", "sessions", "revoke-others") { req async throws -> Response in
            Self.json(try await DemoAPI.revokeOtherSessions(node: nodeID, session: try await req.clusterSession()))
        }
        app.delete("api", "sessions", ":handle") { req async throws -> Response in
            let handle = req.parameters.get("handle") ?? ""
            return Self.json(try await DemoAPI.revokeSession(node: nodeID, handle: handle, session: try await req.clusterSession()))
        }
        app.post("api", "logout") { req async throws -> Response in
            Self.json(try await DemoAPI.logout(node: nodeID, session: try await req.clusterSession()))
        }
    }

    /// Stops the exclusive mode's lock holders.
    func shutdown() async throws {
        try await manager.shutdown()
    }

    static func json(_ answer: PrincipalSessionsAnswer) -> Response { json(answer.body, status: answer.status) }

    static func json(_ text: String, status: Int = 200) -> Response {
        Response(
            status: HTTPResponseStatus(statusCode: status), headers: ["Content-Type": "application/json"],
            body: Response.Body(string: text))
    }
}

/// Adds `X-Served-By` to every response; the core's JSON answer for session errors.
struct ServedByMiddleware: AsyncMiddleware {
    let nodeID: String

    func respond(to request: Request, chainingTo next: any AsyncResponder) async throws -> Response {
        let response: Response
        do {
            response = try await next.respond(to: request)
        } catch let error as SessionErrorAnswer {
            response = error.vaporResponse
        }
        response.headers.replaceOrAdd(name: "X-Served-By", value: nodeID)
        return response
    }
}
