import ArgumentParser
import Balancer
import Logging
import SystemSupport

extension SessionClusterCommand {
    /// The round-robin balancer in front of the nodes.
    struct Proxy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "proxy",
            abstract: "Run the round-robin load balancer (reverse proxy) in front of the nodes.",
            discussion: """
                Example: session-cluster proxy --listen 127.0.0.1:8080 \
                --backend n1=127.0.0.1:9001 --backend n2=127.0.0.1:9002,weight=2. \
                SIGTERM or SIGINT stops accepting, lets requests in flight finish, and exits 0.

                A backend is used while its active health checks (GET /healthz) say up and it is \
                not ejected after connection failures. Admin endpoints: GET /_balancer/status (JSON), \
                GET /_balancer/metrics (Prometheus), POST /_balancer/backends/NAME/drain and \
                .../enable; served only on --admin-listen (refused from other web pages, and needing \
                the token when BALANCER_ADMIN_TOKEN is set), or with --admin-on-client-port and the \
                token on the client port. Anywhere else they answer 404: no client can drain the cluster.
                """)

        @Option(help: "Address to listen on, HOST:PORT (numeric; [v6]:PORT).")
        var listen = "127.0.0.1:8080"

        @Option(
            name: .customLong("backend"),
            help: "A backend, NAME=HOST:PORT[,weight=N]; repeat for each backend.")
        var backends: [String] = []

        @Option(help: "Event loop threads (default: one per core).")
        var eventLoops: Int?

        @Option(help: "Client: from the first byte of a request to the end of its head, in milliseconds.")
        var clientHeaderTimeoutMs = 10_000

        @Option(help: "Client: from the end of a request's head to the end of its body, in milliseconds (408 after; time a slow backend holds the body up does not count).")
        var clientBodyTimeoutMs = 30_000

        @Option(help: "Client: longest wait for the next request on a kept-alive connection, in milliseconds.")
        var clientIdleTimeoutMs = 60_000

        @Option(help: "Backend: connect timeout, in milliseconds.")
        var connectTimeoutMs = 2_000

        @Option(help: "Backend: from the end of the request to the response head, in milliseconds.")
        var responseTimeoutMs = 30_000

        @Option(help: "Backend: longest gap in a response body or a stalled write, in milliseconds.")
        var backendIdleTimeoutMs = 30_000

        @Option(help: "Largest request body, in bytes (413 beyond).")
        var maxBodyBytes = 64 << 20

        @Option(help: "Open client connections at most (503 beyond).")
        var maxConnections = 20_000

        @Option(help: "X-Forwarded-Proto and Forwarded proto: http or https (when TLS ends in front of the balancer).")
        var forwardedProto = "http"

        @Option(help: "Longest wait for requests in flight at shutdown, in milliseconds.")
        var shutdownGraceMs = 30_000

        @Option(help: "Health checks: interval between two checks of a backend, in milliseconds (0: no active checks).")
        var healthCheckIntervalMs = 1_000

        @Option(help: "Health checks: timeout of one check, in milliseconds.")
        var healthCheckTimeoutMs = 500

        @Option(help: "Health checks: the path requested with GET; 2xx and 3xx mean healthy.")
        var healthCheckPath = "/healthz"

        @Option(help: "Health checks: successes in a row that bring a down backend back.")
        var healthCheckRise = 2

        @Option(help: "Health checks: failures in a row that take a backend out.")
        var healthCheckFall = 3

        @Option(help: "A backend coming back gets its full share of requests over this time, in milliseconds (0: at once).")
        var slowStartMs = 0

        @Option(help: "Retry budget: retries allowed in the window, as a share of its requests (0...1).")
        var retryRatio = 0.2

        @Option(help: "Retry budget: retries always allowed in the window, whatever the traffic.")
        var minRetries = 3

        @Option(help: "Retry budget: the sliding window, in milliseconds (≥ 1000).")
        var retryWindowMs = 10_000

        @Option(help: "Requests in flight per backend at most (0: no cap); beyond, requests wait in a queue.")
        var maxRequestsPerBackend = 0

        @Option(help: "Requests waiting for a capped backend at most; beyond, 503 with Retry-After at once.")
        var maxQueuedRequests = 1_000

        @Option(help: "Longest wait in that queue, in milliseconds (503 after).")
        var queueTimeoutMs = 5_000

        @Option(help: "Per-client-IP rate limit, requests per second (429 beyond; default: off).")
        var rateLimit: Double?

        @Option(help: "Requests a client may send at once under --rate-limit (default: the rate, at least 1).")
        var rateLimitBurst: Int?

        @Option(help: "Clients (IPv4 addresses, IPv6 /64s) tracked at most under --rate-limit (default: 100000); beyond, the one seen least recently is forgotten.")
        var rateLimitMaxClients: Int?

        @Option(help: "Serve the admin endpoints (/_balancer/*) on this HOST:PORT, e.g. 127.0.0.1:9090. Without it they are not served (404 on the client port).")
        var adminListen: String?

        @Flag(help: "Also serve the admin endpoints on the client port, to requests with 'Authorization: Bearer TOKEN' (the token from BALANCER_ADMIN_TOKEN or the file named by BALANCER_ADMIN_TOKEN_FILE).")
        var adminOnClientPort = false

        @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "info"

        func makeConfiguration() throws -> BalancerConfiguration {
            guard !backends.isEmpty else { throw ValidationError("at least one --backend NAME=HOST:PORT is needed") }
            let token = try Self.adminToken()
            do throws(BalancerConfigurationError) {
                let (host, port) = try parseHostPort(listen, what: "--listen")
                var parsed: [BackendConfiguration] = []
                for spec in backends { parsed.append(try BackendConfiguration(parsing: spec)) }
                var configuration = BalancerConfiguration(host: host, port: port, backends: parsed)
                if let eventLoops { configuration.eventLoops = eventLoops }
                configuration.clientHeaderTimeoutMillis = clientHeaderTimeoutMs
                configuration.clientBodyTimeoutMillis = clientBodyTimeoutMs
                configuration.clientIdleTimeoutMillis = clientIdleTimeoutMs
                configuration.backendConnectTimeoutMillis = connectTimeoutMs
                configuration.backendResponseTimeoutMillis = responseTimeoutMs
                configuration.backendIdleTimeoutMillis = backendIdleTimeoutMs
                configuration.limits.maxBodyBytes = maxBodyBytes
                configuration.maxClientConnections = maxConnections
                configuration.forwardedProto = forwardedProto
                configuration.shutdownGraceMillis = shutdownGraceMs
                try applyPolicies(to: &configuration)
                configuration.adminToken = token
                try configuration.validate()
                return configuration
            } catch {
                throw ValidationError(error.message)
            }
        }

        /// Health checks, retry budget, per-backend cap, rate limit and admin address.
        func applyPolicies(to configuration: inout BalancerConfiguration) throws(BalancerConfigurationError) {
            guard healthCheckIntervalMs >= 0 else {
                throw BalancerConfigurationError("--health-check-interval-ms must be ≥ 0 (0: no active checks)")
            }
            if healthCheckIntervalMs > 0 {
                configuration.healthCheck = HealthCheckConfiguration(
                    path: healthCheckPath, intervalMillis: healthCheckIntervalMs, timeoutMillis: healthCheckTimeoutMs,
                    rise: healthCheckRise, fall: healthCheckFall, slowStartMillis: slowStartMs)
            }
            configuration.retryRatio = retryRatio
            configuration.minRetries = minRetries
            configuration.retryWindowMillis = retryWindowMs
            configuration.maxRequestsPerBackend = maxRequestsPerBackend
            configuration.maxQueuedRequests = maxQueuedRequests
            configuration.queueTimeoutMillis = queueTimeoutMs
            if let rateLimit {
                guard rateLimit >= 0.001, rateLimit <= 1e9 else {
                    throw BalancerConfigurationError("--rate-limit must be 0.001...1e9 requests per second")
                }
                let burst = rateLimitBurst ?? max(1, Int(rateLimit.rounded(.up)))
                configuration.rateLimit = RateLimitConfiguration(ratePerSecond: rateLimit, burst: burst)
                if let rateLimitMaxClients { configuration.rateLimit?.maxTrackedClients = rateLimitMaxClients }
            } else if rateLimitBurst != nil || rateLimitMaxClients != nil {
                throw BalancerConfigurationError("--rate-limit-burst and --rate-limit-max-clients need --rate-limit")
            }
            if let adminListen {
                let (host, port) = try parseHostPort(adminListen, what: "--admin-listen")
                configuration.adminListen = (host, port)
            }
            configuration.adminOnClientPort = adminOnClientPort
        }

        /// The admin token from BALANCER_ADMIN_TOKEN or BALANCER_ADMIN_TOKEN_FILE (first line), never from argv.
        static func adminToken() throws -> String? {
            do {
                guard let token = try SecretFromEnvironment.secrets("BALANCER_ADMIN_TOKEN")?.first else { return nil }
                return String(decoding: token, as: UTF8.self)
            } catch {
                throw ValidationError("BALANCER_ADMIN_TOKEN: \(error.message)")
            }
        }

        func run() throws {
            guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
            let configuration = try makeConfiguration()
            guard configuration.limits.maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes must be positive") }
            let logger = try standardErrorLogger(label: "balancer", level: logLevel)
            let balancer = try Balancer(configuration: configuration, logger: logger)
            try balancer.start()
            let signal = waitForTerminationSignal()
            logger.info("signal received, draining", metadata: ["signal": "\(signal)"])
            balancer.shutdown()
        }
    }
}
