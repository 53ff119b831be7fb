import Logging
import MiniHTTP
import SessionCore

/// Gives each request its `Session`: reads the cookie, loads the session the
/// first time a handler asks, saves only what changed after the handler, and
/// sets or expires the cookie — `SessionRequest`'s steps, on MiniHTTP.
///
/// Store failures become 503 with a JSON error; a session over the size cap
/// becomes 413. An ID the store does not know is never adopted.
public struct SessionMiddleware: HTTPMiddleware {
    public let store: any SessionStore
    public let configuration: SessionConfiguration
    let logger: Logger

    public init(store: any SessionStore, configuration: SessionConfiguration = SessionConfiguration(), logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    public func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
        let ticket = request.storage[IdempotencyTicketKey.self]
        let handle = SessionRequest(
            store: store, configuration: configuration, cookie: { request.cookie($0) },
            remoteAddress: request.remoteAddress, forwardedProto: request.headers["X-Forwarded-Proto"],
            idempotency: ticket)
        var request = request
        request.storage[SessionRequestKey.self] = handle
        do {
            return try exclusively(handle.cookieID) {
                var response = try next(request)
                guard let commit = handle.prepareCommit(on: &response) else { return response }
                let record = ticket?.record(for: StoredResponse(response))
                try commit.run(record: record).apply(to: &response)
                return response
            }
        } catch let error as SessionStoreError {
            if error.code != .idempotencyKeyCompleted {  // IdempotencyMiddleware answers with the recorded response
                logger.error("session store failed", metadata: ["error": "\(error)", "path": "\(request.path)"])
            }
            throw HTTPError(SessionErrorAnswer(error))
        }
    }

    /// The cookie value for an ID: the ID, plus its HMAC when signing.
    public func cookieValue(for id: SessionID) -> String { configuration.cookieCodec.value(for: id) }

    /// The ID in a cookie value, or nil when malformed or signed by none of the keys.
    public func verifiedID(_ value: String) -> SessionID? { configuration.cookieCodec.verifiedID(value) }
}

/// The request's `SessionRequest`, for `HTTPRequest.session()`.
enum SessionRequestKey: RequestStorageKey { typealias Value = SessionRequest }

extension HTTPResponse: SessionResponseHeaders {
    public mutating func appendSetCookie(_ headerValue: String) { headers.add(name: "Set-Cookie", value: headerValue) }

    public mutating func removeSetCookies(named name: String) {
        headers.remove(name: "Set-Cookie") { SetCookie.sets($0, cookieNamed: name) }
    }

    public mutating func setNoStore() { headers.replaceOrAdd(name: "Cache-Control", value: "no-store") }
}

extension StoredResponse {
    /// A MiniHTTP response as kept for idempotent replays.
    public init(_ response: HTTPResponse) {
        self.init(status: response.status, headers: response.headers.map { [$0.name, $0.value] }, body: response.body)
    }
}

extension HTTPResponse {
    /// A stored response, to replay.
    public init(_ stored: StoredResponse) {
        self.init(
            status: stored.status, headers: HTTPHeaders(stored.headers.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }),
            body: stored.body)
    }
}

extension HTTPError {
    /// The session machinery's answer to an error, as a MiniHTTP error.
    public init(_ answer: SessionErrorAnswer) {
        self.init(
            status: answer.status, code: answer.code, message: answer.message,
            headers: answer.retryAfterSeconds.map { ["Retry-After": String($0)] } ?? [:])
    }
}

extension HTTPRequest {
    /// This request's session. Loaded from the store on first use.
    ///
    /// Throws `SessionStoreError` when the store fails, and a 500 `HTTPError`
    /// when `SessionMiddleware` is not installed in front of the handler.
    public func session() throws -> Session {
        guard let handle = storage[SessionRequestKey.self] else {
            throw HTTPError(
                status: 500, code: "session_middleware_missing",
                message: "SessionMiddleware is not installed in front of this handler")
        }
        return try handle.session()
    }
}
