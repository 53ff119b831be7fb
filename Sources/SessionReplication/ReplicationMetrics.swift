import CoreMetrics
import Synchronization
import SystemSupport

import class Prometheus.PrometheusCollectorRegistry
import struct Prometheus.PrometheusMetricsFactory

/// A replication node's `session_replication_*` series, through swift-metrics, every one
/// labelled `node` (its name). The node counts on its own (`ReplicationCounters`, the store's
/// counts); `update` passes the values on, as gauges and as counter increments: before each
/// `renderMetrics()` and, when the node was given a factory, every `refreshMillis`.
final class ReplicationMetrics: Sendable {
    /// How often the series are updated when they go to a factory the node was given.
    static let refreshMillis = 5_000

    /// The node's own registry, which `renderMetrics()` renders; nil when it was given a factory.
    let registry: PrometheusCollectorRegistry?
    private let factory: any MetricsFactory
    private let node: String
    private let exported = Mutex(Exported())
    private let refresh = RepeatingTimer()

    /// Made on first sight and kept, by name and labels.
    private struct Exported {
        var gauges: [String: Gauge] = [:]
        var totals: [String: FollowedTotal] = [:]
    }

    /// What `update` sets, read from the node: levels and running totals, each with its labels
    /// after `node`.
    struct Values {
        var levels: [(name: String, labels: [(String, String)], value: Int)] = []
        var totals: [(name: String, labels: [(String, String)], value: Int)] = []
    }

    /// With `factory` (nil: a private Prometheus registry), every series labelled `node`.
    init(node: String, factory given: (any MetricsFactory)?) {
        self.node = node
        let destination = MetricsDestination(given)
        registry = destination.registry
        factory = destination.factory
    }

    /// Sets the levels and follows the totals; a level that is no longer listed (a peer that
    /// turned out to be this node itself) is taken out of the factory.
    func update(_ values: Values) {
        exported.withLock { exported in
            var seen = Set<String>()
            for level in values.levels {
                let key = Self.key(level.name, level.labels)
                seen.insert(key)
                if exported.gauges[key] == nil {
                    exported.gauges[key] = Gauge(label: level.name, dimensions: [("node", node)] + level.labels, factory: factory)
                }
                exported.gauges[key]?.record(level.value)
            }
            for (key, gauge) in exported.gauges where !seen.contains(key) {
                gauge.destroy()
                exported.gauges[key] = nil
            }
            for total in values.totals {
                let key = Self.key(total.name, total.labels)
                if exported.totals[key] == nil {
                    exported.totals[key] = FollowedTotal(
                        Counter(label: total.name, dimensions: [("node", node)] + total.labels, factory: factory))
                }
                exported.totals[key]?.follow(total.value)
            }
        }
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        labels.reduce(name) { $0 + "\u{0}" + $1.0 + "\u{0}" + $1.1 }
    }

    /// The registry's Prometheus text; empty when the series go to a factory the node was given.
    func render() -> String {
        registry?.emitToString() ?? ""
    }

    /// With a factory the node was given: runs `update` every `refreshMillis` until `stopRefreshing`.
    func startRefreshing(_ update: @escaping @Sendable () -> Void) {
        guard registry == nil else { return }
        refresh.start(label: "replication-metrics", intervalMillis: Self.refreshMillis, update)
    }

    func stopRefreshing() { refresh.stop() }
}

