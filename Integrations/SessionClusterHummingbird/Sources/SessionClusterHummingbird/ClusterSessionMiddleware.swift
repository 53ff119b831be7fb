import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SessionClusterAsync
import SessionCore

/// Gives Hummingbird handlers a SessionCluster `ClusterSession`: typed
/// attributes saved as per-attribute deltas, atomic `increment`,
/// `regenerateID`, `invalidate`, signed cookies, read-your-writes with the
/// replicated store, and the optional exclusive mode, with the core
/// middleware's semantics (it is the same `Session`, driven by
/// `SessionRequestManager`). Store calls run on a `BlockingExecutor`.
///
/// ```swift
/// let router = Router(context: BasicClusterSessionRequestContext.self)
/// router.add(middleware: ClusterSessionMiddleware(store: store, logger: logger))
/// router.post("/visits") { _, context in
///     "\(try await context.session().increment("visits"))"
/// }
/// ```
///
/// Store failures are answered 503 (JSON, `Retry-After`), a session over the
/// size cap 413, a session busy in exclusive mode 503 `session_busy`: the
/// core's answers.
public struct ClusterSessionMiddleware<Context: ClusterSessionRequestContext>: RouterMiddleware {
    /// The per-request machinery.
    public let manager: SessionRequestManager

    /// A middleware around an existing manager (share one between routers).
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

    public func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let remoteAddress = (context as? any RemoteAddressRequestContext)?.remoteAddress?.ipAddress
        do {
            let boxed = try await manager.respond(
                cookie: { request.cookies[$0]?.value }, remoteAddress: remoteAddress,
                forwardedProto: request.headers[HTTPField.Name("X-Forwarded-Proto")!],
                idempotency: context.clusterSessions.idempotency
            ) { handle in
                var context = context
                context.clusterSessions.session = handle
                return HummingbirdSessionResponse(try await next(request, context))
            }
            return boxed.response
        } catch let error as SessionErrorAnswer {
            context.logger.debug("session error answered", metadata: ["error": "\(error)"])
            return error.hummingbirdResponse
        }
    }
}

/// A Hummingbird response as `SessionRequestManager` edits it.
struct HummingbirdSessionResponse: SessionCookieResponse {
    var response: Response

    init(_ response: Response) { self.response = response }

    mutating func appendSetCookie(_ headerValue: String) {
        response.headers.append(HTTPField(name: .setCookie, value: headerValue))
    }

    mutating func removeSetCookies(named name: String) {
        let kept = response.headers.filter {
            $0.name != .setCookie || !SetCookie.sets($0.value, cookieNamed: name)
        }
        response.headers = HTTPFields(kept)
    }

    mutating func setNoStore() {
        response.headers[.cacheControl] = "no-store"
    }

    mutating func storedResponse() async throws -> StoredResponse {
        let body = try await response.collectBody()
        return StoredResponse(
            status: response.status.code, headers: response.headers.map { [$0.name.rawName, $0.value] }, body: body)
    }
}

extension Response {
    /// Reads the whole body and replaces it with a buffered copy, so the
    /// response can still be sent. Returns the bytes.
    mutating func collectBody() async throws -> [UInt8] {
        let collector = BodyCollector()
        let body = self.body
        try await body.write(collector)
        let bytes = collector.bytes
        self.body = ResponseBody(byteBuffer: ByteBuffer(bytes: bytes))
        return bytes
    }
}

/// A `ResponseBodyWriter` that keeps what is written.
final class BodyCollector: ResponseBodyWriter, @unchecked Sendable {  // used by one task at a time
    private(set) var bytes: [UInt8] = []

    func write(_ buffer: ByteBuffer) async throws {
        bytes.append(contentsOf: buffer.readableBytesView)
    }

    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

extension SessionErrorAnswer {
    /// This answer as a Hummingbird response.
    public var hummingbirdResponse: Response {
        var fields = HTTPFields()
        for header in headers {
            if let name = HTTPField.Name(header.name) { fields.append(HTTPField(name: name, value: header.value)) }
        }
        return Response(
            status: HTTPResponse.Status(code: status), headers: fields,
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }
}
