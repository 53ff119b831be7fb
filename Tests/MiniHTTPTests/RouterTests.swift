import Synchronization
import Testing

@testable import MiniHTTP

@Suite("Router")
struct RouterTests {
    static func named(_ name: String) -> HTTPResponder {
        { request in .text("\(name) \(request.method) \(request.path)") }
    }

    static func router() -> Router {
        var router = Router()
        router.get("/users", named("list"))
        router.post("/users", named("create"))
        router.get("/users/*", named("user"))
        router.delete("/users/*", named("remove"))
        router.put("/items", named("put"))
        router.on("PATCH", "/items", named("patch"))
        router.get("/static/*", named("static"))
        return router
    }

    func body(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    func request(_ method: String, _ target: String) -> HTTPRequest {
        HTTPRequest(method: method, target: target)
    }

    @Test func exactRoutesMatchMethodAndPath() throws {
        let r = Self.router()
        #expect(body(try r.respond(to: request("GET", "/users"))) == "list GET /users")
        #expect(body(try r.respond(to: request("POST", "/users"))) == "create POST /users")
        #expect(body(try r.respond(to: request("PATCH", "/items"))) == "patch PATCH /items")
    }

    @Test func queryIsIgnoredForMatching() throws {
        #expect(body(try Self.router().respond(to: request("GET", "/users?page=2"))) == "list GET /users")
    }

    @Test func prefixRoutesMatchEverythingBelow() throws {
        let r = Self.router()
        #expect(body(try r.respond(to: request("GET", "/users/42"))) == "user GET /users/42")
        #expect(body(try r.respond(to: request("GET", "/users/42/posts?x=1"))) == "user GET /users/42/posts")
        #expect(body(try r.respond(to: request("DELETE", "/users/7"))) == "remove DELETE /users/7")
        #expect(body(try r.respond(to: request("GET", "/static/"))) == "static GET /static/")
    }

    @Test(arguments: ["/nothing", "/static", "/user", "/usersX", "/"])
    func unknownPathIs404(path: String) throws {
        do {
            _ = try Self.router().respond(to: request("GET", path))
            Issue.record("expected 404 for \(path)")
        } catch let error as HTTPError {
            #expect(error.status == 404)
            #expect(error.code == "not_found")
            #expect(error.response.status == 404)
        }
    }

    @Test func wrongMethodIs405WithAllow() throws {
        let r = Self.router()
        do {
            _ = try r.respond(to: request("DELETE", "/users"))
            Issue.record("expected 405")
        } catch let error as HTTPError {
            #expect(error.status == 405)
            #expect(error.code == "method_not_allowed")
            #expect(error.headers["Allow"] == "GET, HEAD, POST")
            #expect(error.response.headers["Allow"] == "GET, HEAD, POST", "Allow is carried into the response")
        }
        do {
            _ = try r.respond(to: request("GET", "/items"))
            Issue.record("expected 405")
        } catch let error as HTTPError {
            #expect(error.status == 405)
            #expect(error.headers["Allow"] == "PUT, PATCH")
        }
    }

    @Test func headIsServedByGetRoute() throws {
        let r = Self.router()
        #expect(body(try r.respond(to: request("HEAD", "/users"))) == "list HEAD /users")
        #expect(body(try r.respond(to: request("HEAD", "/static/a.css"))) == "static HEAD /static/a.css")
        // HEAD on a path without a GET route is not allowed.
        #expect(throws: HTTPError.self) { try r.respond(to: request("HEAD", "/items")) }
    }

    @Test func firstMatchingRouteWins() throws {
        var r = Router()
        r.get("/a/*", Self.named("prefix"))
        r.get("/a/b", Self.named("exact"))
        #expect(body(try r.respond(to: request("GET", "/a/b"))) == "prefix GET /a/b")
    }

    @Test func responderPropertyRoutes() throws {
        let responder = Self.router().responder
        #expect(body(try responder(request("GET", "/users"))) == "list GET /users")
        #expect(throws: HTTPError.self) { try responder(request("GET", "/missing")) }
    }

    @Test func aFallbackAnswersOnlyPathsNoRouteHasThroughItsOwnMiddleware() throws {
        var api = Router()
        api.get("/api/thing", Self.named("thing"))
        var r = Router()
        r.get("/healthz", Self.named("health"))
        r.fallback = MiddlewareChain([MiddlewareTests.Tag(name: "inner")], responder: api.responder).asResponder

        let health = try r.respond(to: request("GET", "/healthz"))
        #expect(body(health) == "health GET /healthz")
        #expect(health.headers["X-Out"] == nil, "a route of the front router skips the fallback's middleware")

        let thing = try r.respond(to: request("GET", "/api/thing"))
        #expect(body(thing) == "thing GET /api/thing")
        #expect(thing.headers["X-Out"] == "inner")

        // A path the front router has keeps its 405; one nobody has gets the fallback's 404.
        #expect(thrownError(r, "POST", "/healthz")?.status == 405)
        let missing = thrownError(r, "GET", "/nowhere")
        #expect(missing?.status == 404)
        #expect(missing?.message == "no route for /nowhere")
    }

    /// The `HTTPError` the router throws for the request (nil when it answers).
    func thrownError(_ r: Router, _ method: String, _ target: String) -> HTTPError? {
        do {
            _ = try r.respond(to: request(method, target))
            return nil
        } catch {
            return error as? HTTPError
        }
    }

    @Test func handlerErrorsPropagate() {
        struct Boom: Error {}
        var r = Router()
        r.get("/boom") { _ in throw Boom() }
        #expect(throws: Boom.self) { try r.respond(to: request("GET", "/boom")) }
    }
}

@Suite("MiddlewareChain")
struct MiddlewareTests {
    /// Records its name on the way in (as a request header) and on the way out (as a response header).
    struct Tag: HTTPMiddleware {
        let name: String
        func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
            var request = request
            let trail = request.head.headers["X-Trail"].map { $0 + "," } ?? ""
            request.head.headers.replaceOrAdd(name: "X-Trail", value: trail + name)
            var response = try next(request)
            response.headers.add(name: "X-Out", value: name)
            return response
        }
    }

    struct ShortCircuit: HTTPMiddleware {
        func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
            if request.path == "/blocked" { return .text("blocked", status: 403) }
            return try next(request)
        }
    }

    struct Thrower: HTTPMiddleware {
        let error: any Error & Sendable
        func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
            throw error
        }
    }

    enum Key: RequestStorageKey { typealias Value = String }

    struct Store: HTTPMiddleware {
        func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
            var request = request
            request.storage[Key.self] = "stored"
            return try next(request)
        }
    }

    let trailResponder: HTTPResponder = { request in .text(request.headers["X-Trail"] ?? "none") }

    @Test func middlewareRunsInOrderFirstIsOutermost() {
        let chain = MiddlewareChain([Tag(name: "a"), Tag(name: "b"), Tag(name: "c")], responder: trailResponder)
        let response = chain.respond(to: HTTPRequest(method: "GET", target: "/"))
        #expect(String(decoding: response.body, as: UTF8.self) == "a,b,c")
        #expect(response.headers.values(of: "X-Out") == ["c", "b", "a"], "responses unwind innermost first")
    }

    @Test func emptyChainCallsResponder() {
        let chain = MiddlewareChain([], responder: trailResponder)
        #expect(String(decoding: chain.respond(to: HTTPRequest(method: "GET", target: "/")).body, as: UTF8.self) == "none")
    }

    @Test func middlewareCanAnswerEarly() {
        let called = Mutex(false)
        let chain = MiddlewareChain([Tag(name: "a"), ShortCircuit()]) { _ in
            called.withLock { $0 = true }
            return .text("handler")
        }
        let response = chain.respond(to: HTTPRequest(method: "GET", target: "/blocked"))
        #expect(response.status == 403)
        #expect(response.headers["X-Out"] == "a")
        #expect(!called.withLock { $0 })
    }

    @Test func storageIsHandedDown() {
        let chain = MiddlewareChain([Store()]) { request in .text(request.storage[Key.self] ?? "missing") }
        #expect(String(decoding: chain.respond(to: HTTPRequest(method: "GET", target: "/")).body, as: UTF8.self) == "stored")
    }

    @Test func httpErrorFromResponderBecomesItsResponse() {
        let chain = MiddlewareChain([Tag(name: "a")]) { _ in
            throw HTTPError(status: 409, code: "conflict", message: "it \"clashed\"", headers: ["Retry-After": "1"])
        }
        let response = chain.respond(to: HTTPRequest(method: "GET", target: "/"))
        #expect(response.status == 409)
        #expect(response.headers["Content-Type"] == "application/json")
        #expect(response.headers["Retry-After"] == "1")
        #expect(String(decoding: response.body, as: UTF8.self) == #"{"error":"conflict","message":"it \"clashed\""}"#)
        #expect(response.headers["X-Out"] == nil, "a middleware that rethrows adds nothing")
    }

    @Test func httpErrorFromMiddlewareBecomesItsResponse() {
        let chain = MiddlewareChain([Tag(name: "a"), Thrower(error: HTTPError.badRequest("nope"))], responder: trailResponder)
        let response = chain.respond(to: HTTPRequest(method: "GET", target: "/"))
        #expect(response.status == 400)
        #expect(String(decoding: response.body, as: UTF8.self) == #"{"error":"bad_request","message":"nope"}"#)
    }

    @Test func otherErrorsBecome500AndAreReported() {
        struct Secret: Error, CustomStringConvertible { var description: String { "db password is hunter2" } }
        let reported = Mutex<[String]>([])
        let chain = MiddlewareChain([Tag(name: "a")]) { _ in throw Secret() }
        let response = chain.respond(to: HTTPRequest(method: "GET", target: "/")) { error in
            reported.withLock { $0.append("\(error)") }
        }
        #expect(response.status == 500)
        let text = String(decoding: response.body, as: UTF8.self)
        #expect(text == #"{"error":"internal_error","message":"internal server error"}"#)
        #expect(!text.contains("hunter2"), "the error text is not shown to the client")
        #expect(reported.withLock { $0 } == ["db password is hunter2"])
    }

    @Test func httpErrorIsNotReportedAsFailure() {
        let reported = Mutex(0)
        let chain = MiddlewareChain([]) { _ in throw HTTPError.badRequest("x") }
        _ = chain.respond(to: HTTPRequest(method: "GET", target: "/")) { _ in reported.withLock { $0 += 1 } }
        #expect(reported.withLock { $0 } == 0)
    }

    @Test func routerInsideChainMaps404And405() {
        var router = Router()
        router.get("/x") { _ in .text("x") }
        let chain = MiddlewareChain([], responder: router.responder)
        #expect(chain.respond(to: HTTPRequest(method: "GET", target: "/x")).status == 200)
        #expect(chain.respond(to: HTTPRequest(method: "GET", target: "/y")).status == 404)
        let notAllowed = chain.respond(to: HTTPRequest(method: "POST", target: "/x"))
        #expect(notAllowed.status == 405)
        #expect(notAllowed.headers["Allow"] == "GET, HEAD")
    }
}
