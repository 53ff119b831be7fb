import Prometheus
import SessionReplication
import TestSupport
import Testing

@Suite("Replication: metrics through swift-metrics")
struct ReplicationMetricsTests {
    @Test func renderMetricsCarriesTheSeriesAndDropsTheSelfLink() throws {
        // Each node lists itself as localhost:PORT: a peer until its own hello comes back.
        let cluster = try LoopbackCluster(count: 2, selfAsLocalhost: true)
        defer { cluster.shutdown() }
        let own = "session_replication_peer_connected{node=\"a\",peer=\"localhost:\(cluster.addresses[0].port)\"}"
        #expect(prometheusSamples(cluster[0].renderMetrics())[own] == 0, "listed before it is known to be this node")
        try #require(cluster.startAndSettle(), "peers: \(cluster.nodes.map(\.peers))")
        _ = try cluster.create(on: 0, ["n": "1"])
        let peer = "peer=\"\(cluster.addresses[1])\""
        var samples: [String: Double] = [:]
        let replicated = waitUntil(timeout: 5) {
            samples = prometheusSamples(cluster[0].renderMetrics())
            return (samples["session_replication_items_sent_total{node=\"a\"}"] ?? 0) >= 1
        }
        #expect(replicated, "\(samples)")
        #expect(samples[own] == nil, "the self link's series are gone")
        #expect(samples["session_replication_ready{node=\"a\"}"] == 1)
        #expect(samples["session_replication_rejoining{node=\"a\"}"] == 0)
        #expect(samples["session_replication_sessions{node=\"a\"}"] == 1)
        #expect(samples["session_replication_peer_connected{node=\"a\",\(peer)}"] == 1)
        #expect(samples["session_replication_peer_lagging{node=\"a\",\(peer)}"] == 0)
        #expect(samples["session_replication_peer_queue_bytes{node=\"a\",\(peer)}"] != nil)
        #expect(samples["session_replication_frames_rejected_total{node=\"a\"}"] == 0)
        #expect(samples["session_replication_concurrent_sets_overwritten_total{node=\"a\"}"] == 0)
        for outcome in ["refused", "current", "waited", "fetched", "gave_up"] {
            #expect(samples["session_replication_catch_up_total{node=\"a\",outcome=\"\(outcome)\"}"] == 0, "\(outcome)")
        }
        for outcome in ["skipped", "unknown", "replayed", "deferred", "timed_out", "rechecked_after_pause"] {
            #expect(samples["session_replication_key_lookup_total{node=\"a\",outcome=\"\(outcome)\"}"] == 0, "\(outcome)")
        }
        #expect(prometheusNames(cluster[0].renderMetrics()).count == 29, "\(prometheusNames(cluster[0].renderMetrics()))")
    }

    @Test func aFactoryOfOnesOwnGetsTheSameSeries() throws {
        let registry = PrometheusCollectorRegistry()
        let cluster = try LoopbackCluster(count: 2, metricsFactories: [nil, PrometheusMetricsFactory(registry: registry)])
        defer { cluster.shutdown() }
        try #require(cluster.startAndSettle(), "peers: \(cluster.nodes.map(\.peers))")
        _ = try cluster.create(on: 0, ["n": "1"])
        // Passed on every few seconds.
        let received = "session_replication_items_received_total{node=\"b\"}"
        #expect(waitUntil(timeout: 15) { prometheusSamples(registry.emitToString())[received] == 1 })
        #expect(cluster[1].renderMetrics() == "", "its series went to the factory")
        let samples = prometheusSamples(registry.emitToString())
        #expect(samples["session_replication_sessions{node=\"b\"}"] == 1)
        #expect(samples["session_replication_peer_connected{node=\"b\",peer=\"\(cluster.addresses[0])\"}"] == 1)
        #expect(prometheusNames(registry.emitToString()) == prometheusNames(cluster[0].renderMetrics()))
    }
}
