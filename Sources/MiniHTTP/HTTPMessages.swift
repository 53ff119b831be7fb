import SystemSupport

/// The HTTP version of a message.
public struct HTTPVersion: Sendable, Equatable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public init(major: Int, minor: Int) {
        self.major = major
        self.minor = minor
    }
    public static let http1_0 = HTTPVersion(major: 1, minor: 0)
    public static let http1_1 = HTTPVersion(major: 1, minor: 1)
    public var description: String { "HTTP/\(major).\(minor)" }
}

/// The request line and header fields of a request, as parsed.
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The request target as sent (origin form: path and optional query).
    public var target: String { didSet { path = Self.path(of: target) } }
    /// The path part of the target, without the query. Split once, when the target is set:
    /// routing, metrics and logs each ask for it on every request.
    public private(set) var path: String
    public var version: HTTPVersion
    public var headers: HTTPHeaders
    /// Whether the connection may carry another request after this one.
    public var keepAlive: Bool
    /// The declared body framing.
    public var bodyFraming: BodyFraming
    /// Whether the client sent `Expect: 100-continue`.
    public var expectsContinue: Bool

    public enum BodyFraming: Sendable, Equatable {
        case none
        case contentLength(Int)
        case chunked
    }

    public init(
        method: String, target: String, version: HTTPVersion = .http1_1, headers: HTTPHeaders = [:],
        keepAlive: Bool = true, bodyFraming: BodyFraming = .none, expectsContinue: Bool = false
    ) {
        self.method = method
        self.target = target
        self.path = Self.path(of: target)
        self.version = version
        self.headers = headers
        self.keepAlive = keepAlive
        self.bodyFraming = bodyFraming
        self.expectsContinue = expectsContinue
    }

    private static func path(of target: String) -> String {
        guard let q = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target }
        return String(target[..<q])
    }

    /// The query part of the target, without the `?`, if any.
    public var query: String? {
        if let q = target.firstIndex(of: "?") { return String(target[target.index(after: q)...]) }
        return nil
    }
}

/// A complete request with its body, as handed to handlers.
public struct HTTPRequest: Sendable {
    public var head: HTTPRequestHead
    public var body: [UInt8]
    /// The peer address of the connection (e.g. "127.0.0.1"), if known.
    public var remoteAddress: String?
    /// Per-request values that middleware hands down to handlers.
    public var storage: RequestStorage

    public init(head: HTTPRequestHead, body: [UInt8] = [], remoteAddress: String? = nil) {
        self.head = head
        self.body = body
        self.remoteAddress = remoteAddress
        self.storage = RequestStorage()
    }

    public init(method: String, target: String, headers: HTTPHeaders = ["Host": "localhost"], body: [UInt8] = []) {
        self.init(head: HTTPRequestHead(method: method, target: target, headers: headers), body: body)
    }

    public var method: String { head.method }
    public var path: String { head.path }
    public var query: String? { head.query }
    public var headers: HTTPHeaders { head.headers }
}

/// A key for a value kept in `RequestStorage`.
public protocol RequestStorageKey {
    associatedtype Value: Sendable
}

/// Typed values attached to a request by middleware.
public struct RequestStorage: Sendable {
    // A few entries at most: a list beats a dictionary on every request.
    private var values: [(key: ObjectIdentifier, value: any Sendable)] = []
    public init() {}
    public subscript<Key: RequestStorageKey>(_ key: Key.Type) -> Key.Value? {
        get {
            let id = ObjectIdentifier(key)
            for entry in values where entry.key == id { return entry.value as? Key.Value }
            return nil
        }
        set {
            let id = ObjectIdentifier(key)
            values.removeAll { $0.key == id }
            if let newValue { values.append((id, newValue)) }
        }
    }
}

/// A response to be serialized.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]

    public init(status: Int = 200, headers: HTTPHeaders = [:], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public init(status: Int = 200, contentType: String, body: String) {
        self.init(status: status, headers: ["Content-Type": contentType], body: Array(body.utf8))
    }

    /// A `text/plain` response.
    public static func text(_ text: String, status: Int = 200) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain; charset=utf-8", body: text)
    }

    /// An `application/json` response with the given pre-encoded JSON text.
    public static func json(_ json: String, status: Int = 200) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "application/json", body: json)
    }

    /// A JSON error body `{"error": code, "message": message}`.
    public static func error(status: Int, code: String, message: String) -> HTTPResponse {
        .json("{\"error\":\(jsonQuoted(code)),\"message\":\(jsonQuoted(message))}", status: status)
    }
}

/// Reason phrases for the status codes this package uses.
public func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 100: "Continue"
    case 200: "OK"
    case 201: "Created"
    case 204: "No Content"
    case 301: "Moved Permanently"
    case 302: "Found"
    case 304: "Not Modified"
    case 400: "Bad Request"
    case 401: "Unauthorized"
    case 403: "Forbidden"
    case 404: "Not Found"
    case 405: "Method Not Allowed"
    case 408: "Request Timeout"
    case 409: "Conflict"
    case 411: "Length Required"
    case 413: "Content Too Large"
    case 415: "Unsupported Media Type"
    case 422: "Unprocessable Content"
    case 429: "Too Many Requests"
    case 431: "Request Header Fields Too Large"
    case 500: "Internal Server Error"
    case 501: "Not Implemented"
    case 502: "Bad Gateway"
    case 503: "Service Unavailable"
    case 504: "Gateway Timeout"
    case 505: "HTTP Version Not Supported"
    default: "Status \(status)"
    }
}
