import ClusterDemo
import Prometheus
import SessionCore
import Testing
import TestSupport

@Suite("Demo node: metrics") struct NodeMetricsTests {
    /// The bucket bounds `/metrics` showed before swift-metrics, as the dashboard and docs know them.
    static let bounds = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1.0", "+Inf"]

    @Test func metricsCarryTheSeriesTheDocsNameAndCountsMove() throws {
        let node = try DemoNode(configuration: DemoNodeConfiguration(nodeID: "n-m", port: 0), logger: quietLogger())
        try node.start()
        defer { node.shutdown() }
        let base = "http://127.0.0.1:\(node.port)"
        let client = CurlClient()
        let counter = "session_node_requests_total{node=\"n-m\",method=\"POST\",route=\"/api/counter\",status=\"200\"}"
        let duration = "session_node_request_duration_seconds"

        let first = try client.request("GET", "\(base)/metrics")
        #expect(first.status == 200)
        #expect(first.header("Content-Type") == ["text/plain; version=0.0.4"])
        let before = prometheusSamples(first.body)
        #expect(before[counter] == nil, "no series for a request not yet seen")
        #expect(before["session_store_sessions{node=\"n-m\"}"] == 0)
        for operation in ["load", "apply", "regenerate", "invalidate"] {
            #expect(before["session_store_errors_total{node=\"n-m\",operation=\"\(operation)\"}"] == 0, "\(operation)")
        }

        for _ in 0..<3 { #expect(try client.request("POST", "\(base)/api/counter").status == 200) }
        #expect(try client.request("GET", "\(base)/nope").status == 404)
        let text = try client.request("GET", "\(base)/metrics").body
        let after = prometheusSamples(text)
        #expect(after[counter] == 3)
        #expect(after["session_node_requests_total{node=\"n-m\",method=\"GET\",route=\"other\",status=\"404\"}"] == 1)
        #expect(after["session_node_requests_total{node=\"n-m\",method=\"GET\",route=\"/metrics\",status=\"200\"}"] == 1)
        // Every request is timed: the first /metrics, three counters, the 404 (this /metrics is not done yet).
        #expect(after["\(duration)_count{node=\"n-m\"}"] == 5)
        #expect((after["\(duration)_sum{node=\"n-m\"}"] ?? 0) > 0)
        for bound in Self.bounds {
            #expect(after["\(duration)_bucket{node=\"n-m\",le=\"\(bound)\"}"] != nil, "bucket \(bound)")
        }
        #expect(after["\(duration)_bucket{node=\"n-m\",le=\"+Inf\"}"] == 5)
        let loads = after["session_store_operation_duration_seconds_count{node=\"n-m\",operation=\"load\"}"] ?? 0
        let applies = after["session_store_operation_duration_seconds_count{node=\"n-m\",operation=\"apply\"}"] ?? 0
        #expect(loads >= 2 && applies == 3, "loads \(loads), applies \(applies)")
        #expect(after["session_store_operation_duration_seconds_bucket{node=\"n-m\",operation=\"apply\",le=\"0.00025\"}"] != nil)
        #expect(after["session_store_sessions{node=\"n-m\"}"] == 1)
        #expect(after["session_idempotency_records{node=\"n-m\",scope=\"session\"}"] == 0)
        #expect(after["session_idempotency_records{node=\"n-m\",scope=\"anonymous\"}"] == 0)
        #expect(after["session_idempotency_record_bytes{node=\"n-m\"}"] == 0)
        #expect(after["session_idempotency_evictions_total{node=\"n-m\"}"] == 0)
        #expect(text.contains("# TYPE session_node_requests_total counter\n"))
        #expect(text.contains("# TYPE \(duration) histogram\n"))
        #expect(text.contains("# TYPE session_store_sessions gauge\n"))
    }

    @Test func aFactoryOfOnesOwnGetsTheSameSeries() throws {
        // The node's own registry, for the names to compare with.
        let reference = try DemoNode(configuration: DemoNodeConfiguration(nodeID: "n-ref", port: 0), logger: quietLogger())
        try reference.start()
        defer { reference.shutdown() }
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        for name in NodeMetrics.durationMetricNames { factory.durationHistogramBuckets[name] = NodeMetrics.durationBuckets }
        let node = try DemoNode(
            configuration: DemoNodeConfiguration(nodeID: "n-own", port: 0), logger: quietLogger(), metricsFactory: factory)
        try node.start()
        defer { node.shutdown() }

        for port in [reference.port, node.port] {
            let client = CurlClient()  // one session on each node
            for _ in 0..<2 { #expect(try client.request("POST", "http://127.0.0.1:\(port)/api/counter").status == 200) }
        }
        let client = CurlClient()
        let elsewhere = try client.request("GET", "http://127.0.0.1:\(node.port)/metrics")
        #expect(elsewhere.status == 404, "the endpoint says the metrics went to the factory: \(elsewhere.body)")
        #expect(elsewhere.body.contains("MetricsFactory"))

        // Requests are counted as they are served; the levels (sessions) every few seconds.
        #expect(
            prometheusSamples(registry.emitToString())[
                "session_node_requests_total{node=\"n-own\",method=\"POST\",route=\"/api/counter\",status=\"200\"}"] == 2)
        let sessions = "session_store_sessions{node=\"n-own\"}"
        #expect(waitUntil(timeout: 15) { prometheusSamples(registry.emitToString())[sessions] == 1 })
        let own = registry.emitToString()
        let referenceText = try client.request("GET", "http://127.0.0.1:\(reference.port)/metrics").body
        #expect(prometheusNames(own) == prometheusNames(referenceText))
        for bound in Self.bounds {
            #expect(own.contains("session_node_request_duration_seconds_bucket{node=\"n-own\",le=\"\(bound)\"}"), "\(bound)")
        }
    }
}
