/// What the benchmark talks to: a loopback base URL, the write and read
/// endpoints, and where answers carry the counter and the serving node.
///
/// Defaults match the cluster demo: `POST /api/counter` answers
/// `{"node":"node1","count":5}`, `GET /api/session` answers the same fields,
/// and every response names its node in `X-Served-By`. Another stack (a
/// Tomcat or Flask cluster) is measured by changing paths and field names.
public struct BenchTarget: Sendable, Codable, Equatable {
    /// A method and a path, e.g. `POST /api/counter`.
    public struct Endpoint: Sendable, Codable, Equatable, CustomStringConvertible {
        public var method: String
        public var path: String

        public init(method: String, path: String) {
            self.method = method
            self.path = path
        }

        /// Parses `"METHOD /path"`; the method is upper-cased.
        public init(_ spec: String) throws(BenchTargetError) {
            let parts = spec.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2, parts[0].allSatisfy({ $0.isLetter }), parts[1].hasPrefix("/"),
                parts[1].unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 })
            else {
                throw BenchTargetError("'\(spec)' is not 'METHOD /path'")
            }
            self.init(method: parts[0].uppercased(), path: String(parts[1]))
        }

        public var description: String { "\(method) \(path)" }
    }

    /// Always 127.0.0.1: the benchmark only drives loopback clusters.
    public var host: String
    public var port: Int
    /// A path prefix from the base URL (e.g. `/app`), or empty.
    public var basePath: String
    /// The counter increment (sent with an `Idempotency-Key`).
    public var write: Endpoint
    /// The session read.
    public var read: Endpoint
    /// Dotted path of the counter in the JSON answer, e.g. `count` or `session.count`.
    public var countField: String
    /// Dotted path of the serving node's name in the JSON answer.
    public var nodeField: String
    /// A response header naming the serving node (preferred over `nodeField`).
    public var nodeHeader: String
    /// The request header that carries a write's idempotency key.
    public var idempotencyHeader: String

    /// `baseURL` must be `http://127.0.0.1:PORT` or `http://localhost:PORT`,
    /// optionally followed by a path prefix.
    public init(
        baseURL: String, write: Endpoint = Endpoint(method: "POST", path: "/api/counter"),
        read: Endpoint = Endpoint(method: "GET", path: "/api/session"), countField: String = "count",
        nodeField: String = "node", nodeHeader: String = "X-Served-By", idempotencyHeader: String = "Idempotency-Key"
    ) throws(BenchTargetError) {
        let scheme = "http://"
        guard baseURL.hasPrefix(scheme) else {
            throw BenchTargetError("'\(baseURL)': only http:// URLs are supported")
        }
        var rest = Substring(baseURL.dropFirst(scheme.count))
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        while path.hasSuffix("/") { path.removeLast() }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port)
        else {
            throw BenchTargetError("'\(baseURL)': expected http://127.0.0.1:PORT")
        }
        let host = rest[..<colon]
        guard host == "127.0.0.1" || host == "localhost" else {
            throw BenchTargetError("'\(baseURL)': only loopback targets (127.0.0.1, localhost) are supported")
        }
        guard path.unicodeScalars.allSatisfy({ $0.value > 32 && $0.value < 127 && $0 != "?" && $0 != "#" }) else {
            throw BenchTargetError("'\(baseURL)': the path prefix must be plain ASCII without query or fragment")
        }
        for field in [countField, nodeField]
        where field.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty) {
            throw BenchTargetError("JSON field path '\(field)' is empty or has an empty component")
        }
        self.host = "127.0.0.1"
        self.port = port
        self.basePath = path
        self.write = write
        self.read = read
        self.countField = countField
        self.nodeField = nodeField
        self.nodeHeader = nodeHeader
        self.idempotencyHeader = idempotencyHeader
    }

    /// `http://127.0.0.1:PORT` plus the path prefix.
    public var baseURL: String { "http://\(host):\(port)\(basePath)" }

    /// The request target of an endpoint (prefix + path).
    func requestTarget(_ endpoint: Endpoint) -> String { basePath + endpoint.path }
}

/// A target that cannot be used, with the reason.
public struct BenchTargetError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
