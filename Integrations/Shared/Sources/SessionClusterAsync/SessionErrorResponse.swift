import MiniHTTP
import SessionCore
import SessionMiddleware

/// An error that is answered as the core middleware answers it: a status, a
/// stable code, a JSON body `{"error": {"code", "message"}}` and headers such
/// as `Retry-After`. The framework adapters turn it into their response type.
public struct SessionErrorResponse: Error, Sendable, CustomStringConvertible {
    /// The HTTP status, e.g. 503.
    public var status: Int
    /// A stable, machine-readable code, e.g. `session_store_unavailable`.
    public var code: String
    /// A message for people.
    public var message: String
    /// Extra response headers (`Content-Type` included).
    public var headers: [HeaderField]
    /// The JSON body.
    public var body: [UInt8]

    /// One response header.
    public struct HeaderField: Sendable, Equatable {
        /// The header name.
        public var name: String
        /// The header value.
        public var value: String
    }

    /// The answer the core would give for `error`.
    public init(_ error: HTTPError) {
        let response = error.response
        status = error.status
        code = error.code
        message = error.message
        headers = response.headers.map { HeaderField(name: $0.name, value: $0.value) }
        body = response.body
    }

    /// The answer for an idempotency refusal (400, 409, 422).
    public init(_ refusal: IdempotencyRefusal) {
        self.init(HTTPError(refusal))
    }

    /// A new error answer.
    public init(status: Int, code: String, message: String, headers: [(String, String)] = []) {
        self.init(HTTPError(status: status, code: code, message: message, headers: HTTPHeaders(headers)))
    }

    public var description: String { "\(status) \(code): \(message)" }

    /// The answer for an error thrown by a store, a session lock or a
    /// handler's session call (503 for an unavailable store or a busy
    /// session, 413 for a session over the size cap, ...); nil for any other
    /// error, which the framework handles as usual.
    public static func from(_ error: any Error) -> SessionErrorResponse? {
        switch error {
        case let error as SessionErrorResponse: error
        case let error as SessionStoreError: SessionErrorResponse(SessionMiddleware.httpError(for: error))
        case let error as SessionBusyError: SessionErrorResponse(SessionMiddleware.httpError(for: error))
        default: nil
        }
    }
}
