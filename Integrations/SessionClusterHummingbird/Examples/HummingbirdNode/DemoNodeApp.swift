import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SessionClusterAsync
import SessionClusterHummingbird
import SessionClusterNodeKit
import SessionCore

/// The demo node's routes on Hummingbird, over any store.
struct DemoNodeApp {
    typealias Context = BasicClusterSessionRequestContext

    let router: Router<Context>
    let manager: SessionRequestManager

    /// - Parameters:
    ///   - healthProblem: what keeps the node from serving (blocking; run on the executor), nil when ready.
    ///   - lameDuck: while it drains, `/healthz` answers 503 `draining` and every response carries `Connection: close`.
    init(
        nodeID: String, store: any SessionStore & IdempotencyStore, executor: BlockingExecutor,
        sessions: SessionConfiguration, healthProblem: @escaping @Sendable () -> String? = { nil },
        lameDuck: LameDuck = LameDuck(delayMillis: 0), logger: Logger
    ) {
        manager = SessionRequestManager(store: store, configuration: sessions, executor: executor, logger: logger)
        let router = Router(context: Context.self)
        router.add(middleware: LameDuckMiddleware(lameDuck: lameDuck))  // outermost: every answer, errors included
        router.add(middleware: ServedByMiddleware(nodeID: nodeID))
        router.add(middleware: 
            ClusterIdempotencyMiddleware(store: store, sessions: sessions, executor: executor, logger: logger))
        router.add(middleware: ClusterSessionMiddleware(manager: manager))

        router.get("/healthz") { _, _ in
            let draining = lameDuck.isDraining
            let problem = draining ? nil : try await executor.run { healthProblem() }
            let (status, body) = DemoAPI.health(node: nodeID, problem: problem, draining: draining)
            return Self.json(body, status: status)
        }
        router.get("/api/session") { _, context in
            Self.json(try DemoAPI.sessionJSON(node: nodeID, session: try await context.session()))
        }
        router.post("/api/counter") { _, context in
            Self.json(try await DemoAPI.counter(node: nodeID, session: try await context.session()))
        }
        router.post("/api/login") { request, context in
            let body = try await request.body.collect(upTo: 16 * 1024)
            return Self.json(
                try await DemoAPI.login(
                    node: nodeID, body: Array(body.readableBytesView), client: request.headers[.userAgent]
                ) { try await context.session() })
        }
        router.get("/api/sessions") { _, context in
            Self.json(try await DemoAPI.userSessions(node: nodeID, session: try await context.session()))
        }
        router.post("/api/sessions/revoke-others") { _, context in
            Self.json(try await DemoAPI.revokeOtherSessions(node: nodeID, session: try await context.session()))
        }
        router.delete("/api/sessions/:handle") { _, context in
            let handle = context.parameters.get("handle") ?? ""
            return Self.json(try await DemoAPI.revokeSession(node: nodeID, handle: handle, session: try await context.session()))
        }
        router.post("/api/logout") { _, context in
            Self.json(try await DemoAPI.logout(node: nodeID, session: try await context.session()))
        }
        self.router = router
    }

    /// Stops the exclusive mode's lock holders.
    func shutdown() async throws {
        try await manager.shutdown()
    }

    static func json(_ answer: PrincipalSessionsAnswer) -> Response { json(answer.body, status: answer.status) }

    static func json(_ text: String, status: Int = 200) -> Response {
        Response(
            status: HTTPResponse.Status(code: status), headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Adds `X-Served-By` to every response, error answers included.
struct ServedByMiddleware<Context: RequestContext>: RouterMiddleware {
    let nodeID: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as SessionErrorAnswer {
            response = error.hummingbirdResponse
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        response.headers[HTTPField.Name("X-Served-By")!] = nodeID
        return response
    }
}
