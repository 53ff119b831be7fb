import CoreMetrics
import Prometheus

/// Where a component's metrics go: the factory its user gave (e.g. `MetricsSystem.factory`
/// after bootstrapping a backend of their own), or else a Prometheus registry of the
/// component's own, which its metrics endpoint renders. One per node or balancer, so many can
/// run in one process (tests do) without sharing series.
public struct MetricsDestination: Sendable {
    /// Where the series are created.
    public let factory: any MetricsFactory
    /// The component's own registry; nil when the series go to the user's factory.
    public let registry: PrometheusCollectorRegistry?

    /// The user's `factory`, or (nil) a private registry whose factory `configure` may adjust
    /// (e.g. histogram buckets).
    public init(_ factory: (any MetricsFactory)?, configure: (inout PrometheusMetricsFactory) -> Void = { _ in }) {
        if let factory {
            self.factory = factory
            registry = nil
        } else {
            let registry = PrometheusCollectorRegistry()
            var prometheus = PrometheusMetricsFactory(registry: registry)
            configure(&prometheus)
            self.factory = prometheus
            self.registry = registry
        }
    }
}
