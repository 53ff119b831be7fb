import MiniHTTP
import SystemSupport

/// The admin endpoints: `GET /_balancer/status` (JSON), `GET /_balancer/metrics`
/// (Prometheus text), `POST /_balancer/backends/NAME/drain` and `.../enable`.
extension Balancer {
    static let adminPrefix = "/_balancer/"

    /// Answers an admin request.
    public func adminResponse(method: String, path: String) -> HTTPResponse {
        let parts = path.dropFirst(Self.adminPrefix.count).split(separator: "/", omittingEmptySubsequences: false)
        switch (method, parts.count) {
        case ("GET", 1) where parts[0] == "status":
            return .json(statusJSON())
        case ("GET", 1) where parts[0] == "metrics":
            guard let text = metricsText() else {
                return .error(
                    status: 404, code: "metrics_elsewhere",
                    message: "this balancer sends its metrics to the MetricsFactory it was given, not to this endpoint")
            }
            return HTTPResponse(status: 200, headers: ["Content-Type": "text/plain; version=0.0.4"], body: text)
        case ("POST", 3) where parts[0] == "backends" && (parts[2] == "drain" || parts[2] == "enable"):
            let name = String(parts[1])
            guard setDraining(name, parts[2] == "drain") else {
                return .error(status: 404, code: "unknown_backend", message: "no backend named '\(name)'")
            }
            return .json("{\"backend\":\(jsonQuoted(name)),\"health\":\(jsonQuoted(health(of: name)))}")
        default:
            return .error(status: 404, code: "not_found", message: "no admin endpoint \(method) \(path)")
        }
    }

    /// Who may use the admin endpoints (see `OperatorAccess`): the admin token when there is
    /// one, else (on `adminListen` only) requests from no other web page.
    var adminAccess: OperatorAccess {
        OperatorAccess(
            token: configuration.adminToken.map { Array($0.utf8) },
            requiredHeader: nil)
    }

    /// On the client port: 404, unless `adminOnClientPort` (then the token decides).
    func adminResponseOnClientPort(_ head: HTTPRequestHead) -> HTTPResponse {
        guard configuration.adminOnClientPort else {
            return .error(
                status: 404, code: "not_found",
                message: "the admin endpoints are not served on this port"
                    + (configuration.adminListen == nil ? "" : "; they are on the admin address"))
        }
        if let refused = adminAccess.refusal(method: head.method, headers: head.headers, what: "admin requests") {
            return refused
        }
        return adminResponse(method: head.method, path: head.path)
    }

    /// Starts the separate admin listener, if configured.
    func startAdminServer() throws -> HTTPServer? {
        guard let address = configuration.adminListen else { return nil }
        let access = adminAccess
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: address.host, port: address.port, eventLoops: 1, handlerThreads: 0, maxConnections: 64,
                headerTimeoutMillis: 5_000, bodyTimeoutMillis: 5_000, idleTimeoutMillis: 30_000,
                writeTimeoutMillis: 5_000, shutdownGraceMillis: 1_000),
            logger: logger
        ) { [weak self] request in
            guard let self else { return .error(status: 503, code: "stopping", message: "the balancer is stopping") }
            if let refused = access.refusal(method: request.method, headers: request.headers, what: "admin requests") {
                return refused
            }
            return adminResponse(method: request.method, path: request.path)
        }
        try server.start()
        return server
    }

    private func health(of name: String) -> String {
        backends.first { $0.name == name }?.health ?? "unknown"
    }

    /// Backends and global totals as JSON.
    func statusJSON() -> String {
        let backendsJSON = backends.map { b in
            "{\"name\":\(jsonQuoted(b.name)),\"address\":\(jsonQuoted(b.host.contains(":") ? "[\(b.host)]:\(b.port)" : "\(b.host):\(b.port)")),"
                + "\"weight\":\(b.weight),\"health\":\(jsonQuoted(b.health)),\"inFlight\":\(b.active),"
                + "\"requests\":\(b.requests),\"responses\":\(b.responses),\"failures\":\(b.failures),"
                + "\"retries\":\(b.retries),\"ejections\":\(b.ejections),\"connectionsOpened\":\(b.connectionsOpened),"
                + "\"reducedShareReason\":\(b.reducedShareReason.map(jsonQuoted) ?? "null")}"
        }
        let totals = Self.totals(statistics).map { "\(jsonQuoted($0.name)):\($0.value)" }
        return "{\"backends\":[\(backendsJSON.joined(separator: ","))],\"totals\":{\(totals.joined(separator: ","))}}"
    }

    /// Passes the global counters and each backend's state on to the balancer's metrics.
    func updateMetrics() {
        metrics.update(statistics, backends)
    }

    /// Prometheus text exposition (version 0.0.4) of the balancer's own registry, just updated;
    /// nil when the balancer was given a metrics factory.
    func metricsText() -> [UInt8]? {
        guard metrics.registry != nil else { return nil }
        updateMetrics()
        return metrics.render()
    }

    /// The global counters by name (snake case).
    static func totals(_ s: BalancerStatistics) -> [(name: String, value: Int)] {
        [
            ("connections_accepted", s.connectionsAccepted), ("connections_rejected", s.connectionsRejected),
            ("requests", s.requests), ("bad_requests", s.badRequests), ("retries", s.retries),
            ("unread_retries", s.unreadRetries),
            ("retry_budget_refusals", s.retryBudgetRefusals), ("queue_rejections", s.queueRejections),
            ("rate_limited", s.rateLimited), ("bad_gateway", s.badGateway), ("no_backend", s.noBackend),
            ("gateway_timeouts", s.gatewayTimeouts), ("aborted", s.aborted), ("client_timeouts", s.clientTimeouts),
        ]
    }
}
