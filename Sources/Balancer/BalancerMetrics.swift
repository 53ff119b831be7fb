import CoreMetrics
import Synchronization
import SystemSupport

import class Prometheus.PrometheusCollectorRegistry
import struct Prometheus.PrometheusMetricsFactory

/// The balancer's series, through swift-metrics: `balancer_NAME_total` for each of
/// `Balancer.totals`, and per backend (label `backend`) `balancer_backend_up`,
/// `balancer_backend_in_flight` (gauges), `balancer_backend_requests_total`, `_responses_total`,
/// `_failures_total`, `_retries_total` and `_ejections_total`.
///
/// The proxy loops count on their own atomics, as before; `update` passes what they counted
/// on to the metric objects, before each `/_balancer/metrics` answer and, when the balancer
/// was given a factory of its own, every `refreshMillis`.
final class BalancerMetrics: Sendable {
    /// How often the series are updated when they go to a factory of the user's.
    static let refreshMillis = 5_000

    /// The balancer's own registry, which `/_balancer/metrics` renders; nil when it was given a factory.
    let registry: PrometheusCollectorRegistry?
    private let exported: Mutex<Exported>
    private let refresh = RepeatingTimer()

    private struct Exported {
        var totals: [FollowedTotal]
        var backends: [BackendSeries]
    }

    private struct BackendSeries {
        var up: Gauge
        var inFlight: Gauge
        var requests: FollowedTotal
        var responses: FollowedTotal
        var failures: FollowedTotal
        var retries: FollowedTotal
        var ejections: FollowedTotal
    }

    /// With `factory` (nil: a private Prometheus registry), one series set per backend name.
    init(factory given: (any MetricsFactory)?, backends: [String]) {
        let destination = MetricsDestination(given)
        registry = destination.registry
        let factory = destination.factory
        func total(_ label: String, _ dimensions: [(String, String)] = []) -> FollowedTotal {
            FollowedTotal(Counter(label: label, dimensions: dimensions, factory: factory))
        }
        let totals = Balancer.totals(BalancerStatistics()).map { total("balancer_\($0.name)_total") }
        let backends = backends.map { name in
            let backend = [("backend", name)]
            return BackendSeries(
                up: Gauge(label: "balancer_backend_up", dimensions: backend, factory: factory),
                inFlight: Gauge(label: "balancer_backend_in_flight", dimensions: backend, factory: factory),
                requests: total("balancer_backend_requests_total", backend),
                responses: total("balancer_backend_responses_total", backend),
                failures: total("balancer_backend_failures_total", backend),
                retries: total("balancer_backend_retries_total", backend),
                ejections: total("balancer_backend_ejections_total", backend))
        }
        exported = Mutex(Exported(totals: totals, backends: backends))
    }

    /// Passes the balancer's totals and its backends' state on to the metric objects.
    func update(_ statistics: BalancerStatistics, _ backends: [BackendStatus]) {
        let totals = Balancer.totals(statistics)
        exported.withLock { exported in
            for (i, total) in totals.enumerated() { exported.totals[i].follow(total.value) }
            for (i, b) in backends.enumerated() where i < exported.backends.count {
                exported.backends[i].up.record(b.health == "up" ? 1 : 0)
                exported.backends[i].inFlight.record(b.active)
                exported.backends[i].requests.follow(b.requests)
                exported.backends[i].responses.follow(b.responses)
                exported.backends[i].failures.follow(b.failures)
                exported.backends[i].retries.follow(b.retries)
                exported.backends[i].ejections.follow(b.ejections)
            }
        }
    }

    /// The registry's Prometheus text; nil when the series go to a factory of the user's.
    func render() -> [UInt8]? {
        guard let registry else { return nil }
        var text: [UInt8] = []
        registry.emit(into: &text)
        return text
    }

    /// With a factory of the user's: runs `update` every `refreshMillis` until `stopRefreshing`.
    func startRefreshing(_ update: @escaping @Sendable () -> Void) {
        guard registry == nil else { return }
        refresh.start(label: "balancer-metrics", intervalMillis: Self.refreshMillis, update)
    }

    func stopRefreshing() { refresh.stop() }
}

