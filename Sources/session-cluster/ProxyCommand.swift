import ArgumentParser
import Balancer
import Logging
import MiniHTTP

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

        @Option(help: "Client: longest wait for the next bytes of a request body, in milliseconds.")
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

        @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "info"

        func makeConfiguration() throws -> BalancerConfiguration {
            guard !backends.isEmpty else { throw ValidationError("at least one --backend NAME=HOST:PORT is needed") }
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
                try configuration.validate()
                return configuration
            } catch {
                throw ValidationError(error.message)
            }
        }

        func run() throws {
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw ValidationError("unknown log level '\(logLevel)'")
            }
            let configuration = try makeConfiguration()
            guard configuration.limits.maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes must be positive") }
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            var logger = Logger(label: "balancer")
            logger.logLevel = level
            let balancer = try Balancer(configuration: configuration, logger: logger)
            try balancer.start()
            let signal = waitForTerminationSignal()
            logger.info("signal received, draining", metadata: ["signal": "\(signal)"])
            balancer.shutdown()
        }
    }
}
