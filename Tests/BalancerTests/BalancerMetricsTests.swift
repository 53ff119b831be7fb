import Balancer
import Prometheus
import TestSupport
import Testing

/// Every series `/_balancer/metrics` shows for backends `b0` and `b1`, as the docs name them.
let balancerSeries: [String] =
    [
        "connections_accepted", "connections_rejected", "requests", "bad_requests", "retries", "unread_retries",
        "retry_budget_refusals", "queue_rejections", "rate_limited", "bad_gateway", "no_backend", "gateway_timeouts",
        "aborted", "client_timeouts",
    ].map { "balancer_\($0)_total" }
    + ["b0", "b1"].flatMap { backend in
        ["up", "in_flight", "requests_total", "responses_total", "failures_total", "retries_total", "ejections_total"].map {
            "balancer_backend_\($0){backend=\"\(backend)\"}"
        }
    }

@Suite("Balancer: metrics through swift-metrics")
struct BalancerMetricsTests {
    @Test func aFactoryOfOnesOwnGetsTheSameSeries() throws {
        let registry = PrometheusCollectorRegistry()
        try withBackends(2) { backends in
            let balancer = try Balancer(
                configuration: adminConfiguration(backends), logger: quietLogger(),
                metricsFactory: PrometheusMetricsFactory(registry: registry))
            try balancer.start()
            defer { balancer.shutdown() }
            _ = try answeringBackends(balancer.port, count: 4)
            let elsewhere = try adminRequest(balancer.port, "GET", "/_balancer/metrics")
            #expect(elsewhere.status == 404, "the endpoint says the metrics went to the factory: \(elsewhere.bodyText)")
            #expect(elsewhere.bodyText.contains("MetricsFactory"))
            // Passed on every few seconds.
            let moved = waitUntil(timeout: 15) {
                prometheusSamples(registry.emitToString())["balancer_backend_requests_total{backend=\"b0\"}"] == 2
            }
            #expect(moved, "\(registry.emitToString())")
            let samples = prometheusSamples(registry.emitToString())
            #expect(Set(samples.keys) == Set(balancerSeries))
            #expect(samples["balancer_requests_total"] == 5)  // the metrics request counts too
            #expect(samples["balancer_backend_requests_total{backend=\"b1\"}"] == 2)
            #expect(samples["balancer_backend_up{backend=\"b0\"}"] == 1)
            #expect(samples["balancer_backend_in_flight{backend=\"b0\"}"] == 0)
        }
    }
}
