import MiniHTTP

/// An error the balancer answers a request with itself (only before any response byte).
enum ProxyErrorAnswer: Equatable {
    /// 429: the client's address is over its rate.
    case rateLimited(retryAfterSeconds: Int)
    /// 503: no backend could be asked (none available, no attempt or no retry left) and none had the request.
    case noBackend
    /// 503: every backend is at its connection cap and the wait queue is full, or the wait was too long.
    case backendsBusy
    /// 502: given up after a backend had the request.
    case badGateway
    /// 502: the backend closed the connection before answering a request that may not be repeated.
    case notRepeated
    /// 502: the backend's response is malformed (or switches protocols).
    case invalidResponse
    /// 504: given up after a backend did not answer in time.
    case gatewayTimeout
    /// 504: the backend did not answer in time, and the request may not be asked elsewhere.
    case backendTimeout
    /// 408: the request body did not arrive in time.
    case bodyTimeout
    /// The request is malformed or over a limit (400, 413, 431, 501, 505).
    case badRequest(HTTPParseError)

    var status: Int {
        switch self {
        case .rateLimited: 429
        case .noBackend, .backendsBusy: 503
        case .badGateway, .notRepeated, .invalidResponse: 502
        case .gatewayTimeout, .backendTimeout: 504
        case .bodyTimeout: 408
        case .badRequest(let error): error.status
        }
    }

    var code: String {
        switch self {
        case .rateLimited: "rate_limited"
        case .noBackend: "no_backend"
        case .backendsBusy: "backends_busy"
        case .badGateway, .notRepeated, .invalidResponse: "bad_gateway"
        case .gatewayTimeout, .backendTimeout: "gateway_timeout"
        case .bodyTimeout: "request_timeout"
        case .badRequest(let error): Self.errorCode(error.status)
        }
    }

    var message: String {
        switch self {
        case .rateLimited: "too many requests from this address"
        case .noBackend: "no backend is available"
        case .backendsBusy: "all backends are busy"
        case .badGateway: "the backend failed before answering"
        case .notRepeated: "the backend closed the connection before answering; the request was not repeated"
        case .invalidResponse: "the backend sent an invalid response"
        case .gatewayTimeout: "no backend answered in time"
        case .backendTimeout: "the backend did not answer in time"
        case .bodyTimeout: "request body not received in time"
        case .badRequest(let error): error.reason
        }
    }

    /// The Retry-After seconds it carries, if any.
    var retryAfter: Int? {
        switch self {
        case .rateLimited(let seconds): seconds
        case .backendsBusy: 1
        default: nil
        }
    }

    /// The response: a JSON error body, and Retry-After when it has one.
    var response: HTTPResponse {
        var response = HTTPResponse.error(status: status, code: code, message: message)
        if let retryAfter { response.headers.add(name: "Retry-After", value: "\(retryAfter)") }
        return response
    }

    /// The error code of a parse error's status.
    static func errorCode(_ status: Int) -> String {
        switch status {
        case 408: "request_timeout"
        case 413: "body_too_large"
        case 431: "headers_too_large"
        case 501: "not_implemented"
        case 505: "version_not_supported"
        default: "bad_request"
        }
    }
}
