#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SystemSupport

/// One backend of the balancer.
public struct BackendConfiguration: Sendable, Equatable {
    /// A short name, used in logs, status and admin paths.
    public var name: String
    /// Numeric IPv4/IPv6 address.
    public var host: String
    public var port: Int
    /// Share of the round robin: a backend of weight 2 gets twice the requests of one of weight 1.
    public var weight: Int

    public init(name: String, host: String, port: Int, weight: Int = 1) {
        self.name = name
        self.host = host
        self.port = port
        self.weight = weight
    }

    /// Parses `NAME=HOST:PORT[,weight=N]` (an IPv6 host in brackets: `n1=[::1]:9001`).
    public init(parsing spec: String) throws(BalancerConfigurationError) {
        guard let eq = spec.firstIndex(of: "=") else {
            throw BalancerConfigurationError("backend '\(spec)': expected NAME=HOST:PORT[,weight=N]")
        }
        let name = String(spec[..<eq])
        guard !name.isEmpty, name.utf8.allSatisfy({ Self.isNameByte($0) }) else {
            throw BalancerConfigurationError("backend '\(spec)': the name must be letters, digits, '-', '_' or '.'")
        }
        var parts = spec[spec.index(after: eq)...].split(separator: ",", omittingEmptySubsequences: false)
        guard !parts.isEmpty else { throw BalancerConfigurationError("backend '\(spec)': missing address") }
        let address = String(parts.removeFirst())
        let (host, port) = try parseHostPort(address, what: "backend '\(name)'")
        var weight = 1
        for option in parts {
            let kv = option.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, kv[0] == "weight", let w = Int(kv[1]), (1...100).contains(w) else {
                throw BalancerConfigurationError("backend '\(name)': unknown option '\(option)' (weight=1...100)")
            }
            weight = w
        }
        self.init(name: name, host: host, port: port, weight: weight)
    }

    static func isNameByte(_ b: UInt8) -> Bool {
        (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 45 || b == 95 || b == 46
    }
}

/// A configuration that cannot work, with the reason.
public struct BalancerConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6) and checks that the host is numeric.
public func parseHostPort(_ text: String, what: String) throws(BalancerConfigurationError) -> (String, Int) {
    var host: Substring
    var portText: Substring
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
            throw BalancerConfigurationError("\(what): expected [IPv6]:PORT, got '\(text)'")
        }
        host = text[text.index(after: text.startIndex)..<close]
        portText = text[text.index(close, offsetBy: 2)...]
    } else {
        guard let colon = text.lastIndex(of: ":") else {
            throw BalancerConfigurationError("\(what): expected HOST:PORT, got '\(text)'")
        }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    if host == "localhost" { host = "127.0.0.1" }
    guard let port = Int(portText), (0...65535).contains(port) else {
        throw BalancerConfigurationError("\(what): invalid port in '\(text)'")
    }
    guard SocketAddress(host: String(host), port: port) != nil else {
        throw BalancerConfigurationError("\(what): '\(host)' is not a numeric IPv4/IPv6 address")
    }
    return (String(host), port)
}

/// Settings of a `Balancer`. Times are in milliseconds.
public struct BalancerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port; read the result from `Balancer.port`.
    public var port: Int
    public var backends: [BackendConfiguration]
    /// Event loop threads; each owns its client connections and its pool of backend connections.
    public var eventLoops: Int
    /// Open client connections at most; beyond this, new ones get 503 and are closed.
    public var maxClientConnections: Int
    /// Request head (431) and body (413) limits for clients.
    public var limits: HTTPParserLimits
    /// Largest response head accepted from a backend (502 beyond).
    public var maxResponseHeadBytes: Int

    /// From the first byte of a request to the end of its head (408 after).
    public var clientHeaderTimeoutMillis: Int
    /// From the end of a request's head to the end of its body, however its bytes trickle in
    /// (408 after, and the connection closes). Time the backend holds the body up (it does not
    /// take the bytes already read) does not count.
    public var clientBodyTimeoutMillis: Int
    /// Longest wait for the next request on a kept-alive client connection.
    public var clientIdleTimeoutMillis: Int
    /// Longest wait for a write to a client to make progress.
    public var clientWriteTimeoutMillis: Int
    /// Longest wait for a backend connection to be established.
    public var backendConnectTimeoutMillis: Int
    /// From the end of the request to the backend's response head (504 after).
    public var backendResponseTimeoutMillis: Int
    /// Longest gap between bytes of a backend's response body, and longest
    /// wait for a write to a backend to make progress.
    public var backendIdleTimeoutMillis: Int
    /// How long an unused pooled backend connection is kept.
    public var poolIdleTimeoutMillis: Int
    /// Idle pooled connections kept per backend and event loop.
    public var maxIdlePerBackend: Int

    /// Bytes buffered per direction of a connection before reading the other side pauses.
    public var bufferHighWater: Int
    /// A request is kept for a retry while all its bytes fit in this many.
    public var replayBufferBytes: Int
    /// A backend whose connection fails is left out for this long, doubling per
    /// consecutive failure up to `ejectMaxMillis`.
    public var ejectBaseMillis: Int
    public var ejectMaxMillis: Int
    /// Sent as X-Forwarded-Proto and in Forwarded.
    public var forwardedProto: String
    /// Longest wait for in-flight requests at shutdown.
    public var shutdownGraceMillis: Int

    /// Active `GET /healthz` checks; nil: off (only passive ejection).
    public var healthCheck: HealthCheckConfiguration?
    /// Retries allowed while retries in `retryWindowMillis` stay below
    /// max(`minRetries`, `retryRatio` × requests in the window).
    public var retryRatio: Double = 0.2
    public var minRetries: Int = 3
    public var retryWindowMillis: Int = 10_000
    /// Requests in flight per backend at most (0: no cap); beyond, requests wait in a queue.
    public var maxRequestsPerBackend: Int = 0
    /// Requests waiting for a backend at most (over all loops); beyond, 503 at once.
    public var maxQueuedRequests: Int = 1_000
    /// Longest wait in that queue (503 after).
    public var queueTimeoutMillis: Int = 5_000
    /// Per-client-IP request rate limit (429 beyond); nil: off.
    public var rateLimit: RateLimitConfiguration?
    /// Serve the admin endpoints (`/_balancer/*`) on this separate address. Without it (and without
    /// `adminOnClientPort`) they are not served over HTTP at all; on the client port they answer 404.
    public var adminListen: (host: String, port: Int)?
    /// Bearer token every admin request must carry (`Authorization: Bearer TOKEN`); nil: none
    /// (then only `adminListen`, best on loopback, serves them).
    public var adminToken: String?
    /// Serve the admin endpoints on the client port too, to requests with `adminToken` (needed);
    /// every other request under `/_balancer/` answers 404 or 401 there.
    public var adminOnClientPort = false

    public init(
        host: String = "127.0.0.1", port: Int = 8080, backends: [BackendConfiguration],
        eventLoops: Int = BalancerConfiguration.defaultEventLoops, maxClientConnections: Int = 20_000,
        limits: HTTPParserLimits = HTTPParserLimits(maxHeadBytes: 16 * 1024, maxHeaderCount: 128, maxBodyBytes: 64 << 20),
        maxResponseHeadBytes: Int = 64 * 1024,
        clientHeaderTimeoutMillis: Int = 10_000, clientBodyTimeoutMillis: Int = 30_000,
        clientIdleTimeoutMillis: Int = 60_000, clientWriteTimeoutMillis: Int = 30_000,
        backendConnectTimeoutMillis: Int = 2_000, backendResponseTimeoutMillis: Int = 30_000,
        backendIdleTimeoutMillis: Int = 30_000, poolIdleTimeoutMillis: Int = 30_000, maxIdlePerBackend: Int = 256,
        bufferHighWater: Int = 256 * 1024, replayBufferBytes: Int = 64 * 1024,
        ejectBaseMillis: Int = 1_000, ejectMaxMillis: Int = 30_000, forwardedProto: String = "http",
        shutdownGraceMillis: Int = 30_000
    ) {
        self.host = host
        self.port = port
        self.backends = backends
        self.eventLoops = eventLoops
        self.maxClientConnections = maxClientConnections
        self.limits = limits
        self.maxResponseHeadBytes = maxResponseHeadBytes
        self.clientHeaderTimeoutMillis = clientHeaderTimeoutMillis
        self.clientBodyTimeoutMillis = clientBodyTimeoutMillis
        self.clientIdleTimeoutMillis = clientIdleTimeoutMillis
        self.clientWriteTimeoutMillis = clientWriteTimeoutMillis
        self.backendConnectTimeoutMillis = backendConnectTimeoutMillis
        self.backendResponseTimeoutMillis = backendResponseTimeoutMillis
        self.backendIdleTimeoutMillis = backendIdleTimeoutMillis
        self.poolIdleTimeoutMillis = poolIdleTimeoutMillis
        self.maxIdlePerBackend = maxIdlePerBackend
        self.bufferHighWater = bufferHighWater
        self.replayBufferBytes = replayBufferBytes
        self.ejectBaseMillis = ejectBaseMillis
        self.ejectMaxMillis = ejectMaxMillis
        self.forwardedProto = forwardedProto
        self.shutdownGraceMillis = shutdownGraceMillis
    }

    /// One loop per core.
    public static var defaultEventLoops: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Throws when the settings cannot work.
    public func validate() throws(BalancerConfigurationError) {
        guard !backends.isEmpty else { throw BalancerConfigurationError("at least one backend is needed") }
        guard backends.count <= 64 else { throw BalancerConfigurationError("at most 64 backends") }
        var names = Set<String>()
        for backend in backends {
            guard names.insert(backend.name).inserted else {
                throw BalancerConfigurationError("backend name '\(backend.name)' is used twice")
            }
            guard backend.weight >= 1 else { throw BalancerConfigurationError("backend '\(backend.name)': weight must be ≥ 1") }
            guard SocketAddress(host: backend.host, port: backend.port) != nil else {
                throw BalancerConfigurationError("backend '\(backend.name)': '\(backend.host)' is not a numeric address")
            }
        }
        guard (1...256).contains(eventLoops) else { throw BalancerConfigurationError("event loops must be 1...256") }
        let times = [
            clientHeaderTimeoutMillis, clientBodyTimeoutMillis, clientIdleTimeoutMillis, clientWriteTimeoutMillis,
            backendConnectTimeoutMillis, backendResponseTimeoutMillis, backendIdleTimeoutMillis,
            poolIdleTimeoutMillis, ejectBaseMillis, ejectMaxMillis,
        ]
        guard times.allSatisfy({ $0 > 0 }) else { throw BalancerConfigurationError("timeouts must be positive") }
        guard bufferHighWater >= 4096 else { throw BalancerConfigurationError("bufferHighWater must be ≥ 4096") }
        guard replayBufferBytes >= 0 else { throw BalancerConfigurationError("replayBufferBytes must be ≥ 0") }
        guard forwardedProto == "http" || forwardedProto == "https" else {
            throw BalancerConfigurationError("forwardedProto must be http or https")
        }
        try healthCheck?.validate()
        try rateLimit?.validate()
        guard (0...1).contains(retryRatio), minRetries >= 0, retryWindowMillis >= 1_000 else {
            throw BalancerConfigurationError("retry budget: ratio 0...1, min retries ≥ 0, window ≥ 1000 ms")
        }
        guard maxRequestsPerBackend >= 0, maxQueuedRequests >= 0, queueTimeoutMillis > 0 else {
            throw BalancerConfigurationError("per-backend cap and queue size must be ≥ 0, queue timeout positive")
        }
        if let admin = adminListen, SocketAddress(host: admin.host, port: admin.port) == nil {
            throw BalancerConfigurationError("admin address '\(admin.host)' is not a numeric address")
        }
        if let token = adminToken, token.utf8.count < 16 || !token.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) {
            throw BalancerConfigurationError("the admin token must be at least 16 printable ASCII characters, no spaces")
        }
        if adminOnClientPort && adminToken == nil {
            throw BalancerConfigurationError("admin endpoints on the client port need an admin token")
        }
        if adminOnClientPort && adminListen != nil {
            throw BalancerConfigurationError("admin endpoints go either on the client port or on a separate address, not both")
        }
    }
}
