import SystemSupport

/// How the session machinery answers an error, whatever the transport: a
/// status, a stable code, a JSON body `{"error": code, "message": message}`
/// and headers such as `Retry-After`. Each binding (the MiniHTTP middleware,
/// the Hummingbird and Vapor adapters) turns it into its own response.
public struct SessionErrorAnswer: Error, Sendable, Equatable, CustomStringConvertible {
    /// One response header.
    public struct HeaderField: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// The HTTP status, e.g. 503.
    public var status: Int
    /// A stable, machine-readable code, e.g. `session_store_unavailable`.
    public var code: String
    /// A message for people.
    public var message: String
    /// `Retry-After`, when a retry may succeed.
    public var retryAfterSeconds: Int?

    public init(status: Int, code: String, message: String, retryAfterSeconds: Int? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
    }

    public var description: String { "\(status) \(code): \(message)" }

    /// The response headers: `Content-Type`, then `Retry-After` when set.
    public var headers: [HeaderField] {
        [HeaderField(name: "Content-Type", value: "application/json")]
            + (retryAfterSeconds.map { [HeaderField(name: "Retry-After", value: String($0))] } ?? [])
    }

    /// The JSON body.
    public var body: [UInt8] { Array("{\"error\":\(jsonQuoted(code)),\"message\":\(jsonQuoted(message))}".utf8) }

    /// The answer to a store error: 503 for an unavailable or full store, 413 for a session
    /// over the size cap, 409 for a key another run completed or a user at their session limit,
    /// 501 for what the store cannot do, 500 for a programming error.
    public init(_ error: SessionStoreError) {
        switch error.code {
        case .unavailable, .capacityExceeded:
            self.init(status: 503, code: "session_store_\(error.code)", message: error.message, retryAfterSeconds: 1)
        case .sessionTooLarge:
            self.init(status: 413, code: "session_too_large", message: error.message)
        case .idempotencyKeyCompleted:
            self.init(status: 409, code: "idempotency_key_completed", message: error.message, retryAfterSeconds: 0)
        case .principalLimitReached:
            self.init(status: 409, code: "session_limit_reached", message: error.message)
        case .unsupported:
            self.init(status: 501, code: "session_store_unsupported", message: error.message)
        default:  // typeMismatch, invalidValue, and codes added later
            self.init(status: 500, code: "session_\(error.code)", message: error.message)
        }
    }

    /// The answer to a session whose exclusive lock was not granted in time: 503 `session_busy`.
    public init(_ error: SessionBusyError) {
        self.init(
            status: 503, code: "session_busy", message: "another request of this session is still running; retry shortly",
            retryAfterSeconds: 1)
    }

    /// The answer to an error thrown by a store, a session lock, an idempotency check or a
    /// handler's session call; nil for any other error, which the transport handles as usual.
    public static func from(_ error: any Error) -> SessionErrorAnswer? {
        switch error {
        case let error as SessionErrorAnswer: error
        case let error as SessionStoreError: SessionErrorAnswer(error)
        case let error as SessionBusyError: SessionErrorAnswer(error)
        default: nil
        }
    }
}
