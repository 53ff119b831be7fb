/// Produces a response for a request. May throw `HTTPError`.
public typealias HTTPResponder = @Sendable (HTTPRequest) throws -> HTTPResponse

/// A step in front of a responder: it may change the request, answer early,
/// or post-process the response of `next`.
public protocol HTTPMiddleware: Sendable {
    func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse
}

/// An error with the HTTP status and JSON body to answer it with.
public struct HTTPError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    /// A stable, machine-readable code, e.g. `session_store_unavailable`.
    public var code: String
    public var message: String
    public var headers: HTTPHeaders

    public init(status: Int, code: String, message: String, headers: HTTPHeaders = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    public var description: String { "\(status) \(code): \(message)" }

    /// The JSON error response.
    public var response: HTTPResponse {
        var r = HTTPResponse.error(status: status, code: code, message: message)
        for field in headers { r.headers.add(name: field.name, value: field.value) }
        return r
    }

    public static func badRequest(_ message: String) -> HTTPError {
        HTTPError(status: 400, code: "bad_request", message: message)
    }
}

/// Middleware in order (first is outermost) in front of a final responder.
public struct MiddlewareChain: Sendable {
    public var middleware: [any HTTPMiddleware]
    public var responder: HTTPResponder

    public init(_ middleware: [any HTTPMiddleware], responder: @escaping HTTPResponder) {
        self.middleware = middleware
        self.responder = responder
    }

    /// The chain as a responder that throws what the chain throws (e.g. a router's `fallback`).
    public var asResponder: HTTPResponder {
        let chain = self
        return { try chain.run(index: 0, request: $0) }
    }

    /// Runs the chain. Thrown `HTTPError`s become their responses; any other
    /// error becomes a 500 (its text is not shown to the client).
    public func respond(to request: HTTPRequest, onError: (any Error) -> Void = { _ in }) -> HTTPResponse {
        do {
            return try run(index: 0, request: request)
        } catch let error as HTTPError {
            return error.response
        } catch {
            onError(error)
            return HTTPResponse.error(status: 500, code: "internal_error", message: "internal server error")
        }
    }

    private func run(index: Int, request: HTTPRequest) throws -> HTTPResponse {
        if index == middleware.count { return try responder(request) }
        return try middleware[index].respond(to: request) { next in
            try run(index: index + 1, request: next)
        }
    }
}

/// Routes by method and exact path; a path ending in `/*` matches its prefix.
public struct Router: Sendable {
    private struct Route: Sendable {
        var method: String
        var path: String
        var isPrefix: Bool
        var responder: HTTPResponder
    }

    private var routes: [Route] = []
    /// Answers a request whose path no route has (instead of 404), e.g. another router behind
    /// middleware that this router's routes skip: `MiddlewareChain(…, responder: api.responder).asResponder`.
    public var fallback: HTTPResponder?

    public init() {}

    public mutating func on(_ method: String, _ path: String, _ responder: @escaping HTTPResponder) {
        let isPrefix = path.hasSuffix("/*")
        routes.append(Route(
            method: method, path: isPrefix ? String(path.dropLast()) : path, isPrefix: isPrefix, responder: responder))
    }

    public mutating func get(_ path: String, _ responder: @escaping HTTPResponder) { on("GET", path, responder) }
    public mutating func post(_ path: String, _ responder: @escaping HTTPResponder) { on("POST", path, responder) }
    public mutating func put(_ path: String, _ responder: @escaping HTTPResponder) { on("PUT", path, responder) }
    public mutating func delete(_ path: String, _ responder: @escaping HTTPResponder) { on("DELETE", path, responder) }

    /// Answers 404 when no route has the path, 405 (with `Allow`) when none has the method.
    /// A GET route also answers HEAD.
    public func respond(to request: HTTPRequest) throws -> HTTPResponse {
        let path = request.path
        var allowed: [String] = []
        // By index, the routes in place: a loop over copies retained each route's strings and closure.
        for i in routes.indices where routes[i].isPrefix ? path.hasPrefix(routes[i].path) : path == routes[i].path {
            let method = routes[i].method
            if method == request.method || (request.method == "HEAD" && method == "GET") {
                return try routes[i].responder(request)
            }
            if !allowed.contains(method) { allowed.append(method) }
            if method == "GET" && !allowed.contains("HEAD") { allowed.append("HEAD") }
        }
        if allowed.isEmpty {
            if let fallback { return try fallback(request) }
            throw HTTPError(status: 404, code: "not_found", message: "no route for \(path)")
        }
        throw HTTPError(
            status: 405, code: "method_not_allowed", message: "\(request.method) is not allowed on \(path)",
            headers: ["Allow": allowed.joined(separator: ", ")])
    }

    /// This router as a responder.
    public var responder: HTTPResponder {
        let copy = self
        return { try copy.respond(to: $0) }
    }
}
