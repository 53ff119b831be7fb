import SessionClusterAsync
import SessionCore
import Vapor

/// Gives Vapor handlers a SessionCluster `ClusterSession` (`req.clusterSession()`):
/// typed attributes saved as per-attribute deltas, atomic `increment`,
/// `regenerateID`, `invalidate`, signed cookies, read-your-writes with the
/// replicated store, and the optional exclusive mode, with the core
/// middleware's semantics (the same `Session`, driven by
/// `SessionRequestManager`). Store calls run on a `BlockingExecutor`.
///
/// ```swift
/// app.middleware.use(ClusterSessionsMiddleware(store: store, logger: app.logger))
/// app.post("visits") { req async throws -> String in
///     "\(try await req.clusterSession().increment("visits"))"
/// }
/// ```
///
/// Store failures are answered 503 (JSON, `Retry-After`), a session over
/// the size cap 413, a busy session in exclusive mode 503 `session_busy`:
/// the core's answers.
public struct ClusterSessionsMiddleware: AsyncMiddleware {
    /// The per-request machinery.
    public let manager: SessionRequestManager

    /// A middleware around an existing manager.
    public init(manager: SessionRequestManager) {
        self.manager = manager
    }

    /// A middleware for `store`, with the core's `SessionConfiguration`
    /// (cookie name, signing key, `Secure`, trusted proxies, exclusive mode).
    public init(
        store: any SessionStore, configuration: SessionConfiguration = SessionConfiguration(),
        executor: BlockingExecutor = .shared, logger: Logger
    ) {
        manager = SessionRequestManager(store: store, configuration: configuration, executor: executor, logger: logger)
    }

    public func respond(to request: Request, chainingTo next: any AsyncResponder) async throws -> Response {
        do {
            let boxed = try await manager.respond(
                cookie: { request.cookies[$0]?.string }, remoteAddress: request.remoteAddress?.ipAddress,
                forwardedProto: request.headers.first(name: "X-Forwarded-Proto"),
                idempotency: request.storage[IdempotencyTicketKey.self]
            ) { handle in
                request.storage[RequestSessionKey.self] = handle
                return VaporSessionResponse(try await next.respond(to: request), eventLoop: request.eventLoop)
            }
            return boxed.response
        } catch let error as SessionErrorAnswer {
            request.logger.debug("session error answered", metadata: ["error": "\(error)"])
            return error.vaporResponse
        }
    }
}

enum RequestSessionKey: StorageKey {
    typealias Value = RequestSession
}

enum IdempotencyTicketKey: StorageKey {
    typealias Value = IdempotencyTicket
}

extension Request {
    /// This request's SessionCluster session, loaded from the store (off the
    /// event loop) on first use. Throws a 500 `SessionErrorAnswer` when
    /// `ClusterSessionsMiddleware` is not installed in front of the handler,
    /// and `SessionStoreError` when the store fails (the middleware answers 503).
    public func clusterSession() async throws -> ClusterSession {
        guard let handle = storage[RequestSessionKey.self] else {
            throw SessionErrorAnswer(
                status: 500, code: "session_middleware_missing",
                message: "ClusterSessionsMiddleware is not installed in front of this handler")
        }
        return try await handle.session()
    }
}

/// A Vapor response as `SessionRequestManager` edits it.
struct VaporSessionResponse: SessionCookieResponse {
    let response: Response
    let eventLoop: any EventLoop

    init(_ response: Response, eventLoop: any EventLoop) {
        self.response = response
        self.eventLoop = eventLoop
    }

    mutating func appendSetCookie(_ headerValue: String) {
        response.headers.add(name: .setCookie, value: headerValue)
    }

    mutating func removeSetCookies(named name: String) {
        let kept = response.headers[.setCookie].filter { !SetCookie.sets($0, cookieNamed: name) }
        response.headers.remove(name: .setCookie)
        for value in kept { response.headers.add(name: .setCookie, value: value) }
    }

    mutating func setNoStore() {
        response.headers.replaceOrAdd(name: .cacheControl, value: "no-store")
    }

    mutating func storedResponse() async throws -> StoredResponse {
        try await response.storedResponse(on: eventLoop)
    }
}

extension Response {
    /// The response as kept for idempotent replays; a streamed body is
    /// collected and replaced by the buffered copy.
    func storedResponse(on eventLoop: any EventLoop) async throws -> StoredResponse {
        var bytes: [UInt8] = []
        if let buffer = body.buffer {
            bytes = Array(buffer.readableBytesView)
        } else if let collected = try await body.collect(on: eventLoop).get() {
            bytes = Array(collected.readableBytesView)
            body = Response.Body(buffer: collected)
        }
        return StoredResponse(status: Int(status.code), headers: headers.map { [$0.name, $0.value] }, body: bytes)
    }
}

extension SessionErrorAnswer {
    /// This answer as a Vapor response: the core's JSON body and headers.
    public var vaporResponse: Response {
        Response(
            status: HTTPResponseStatus(statusCode: status),
            headers: HTTPHeaders(headers.map { ($0.name, $0.value) }),
            body: Response.Body(buffer: ByteBuffer(bytes: body)))
    }
}
