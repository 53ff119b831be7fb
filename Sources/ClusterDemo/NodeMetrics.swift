import Atomics
import CoreMetrics
import SessionCore
import Synchronization
import SystemSupport

/// A node's metrics, sent through swift-metrics to the factory it was made with
/// (`DemoNode` passes its own Prometheus registry's, or the one it was given).
///
/// Series: `session_node_requests_total{node,method,route,status}`,
/// `session_node_request_duration_seconds{node}` (a `Timer`),
/// `session_store_operation_duration_seconds{node,operation}` (a `Timer`),
/// `session_store_errors_total{node,operation}`, and what `update` sets: `session_store_sessions`,
/// `session_idempotency_records{scope}`, `session_idempotency_record_bytes`, `session_idempotency_evictions_total`;
/// for sessions by user: `session_principal_sessions` (a histogram of a user's sessions, at each
/// listing) and `session_events_total{kind}` (the session events this node delivered, once per
/// cluster: `kind="evicted"` counts the sessions the per-user limit ended).
///
/// Every request records here. Each counter and timer is made once (a factory call takes a
/// lock) and kept: a request counter on its first use, in a slot indexed by method, route and
/// status; the hot path then only loads a reference. swift-prometheus's histogram takes a lock
/// per record; against the lock-free atomics it replaced, the node's CPU time per request showed
/// no difference within the noise (scripts/bench-node.sh and an interleaved A/B on 2 cores).
public final class NodeMetrics: Sendable {
    /// The routes counted by name; any other path counts as "other".
    static let routes = [
        "/", "/healthz", "/metrics", "/api/session", "/api/counter", "/api/login", "/api/logout", "/api/sessions",
        "/api/sessions/revoke-others", "/api/events", "other",
    ]
    static let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "other"]
    static let statuses = [
        200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 500, 501, 502, 503, 504, 505, 0,
    ]
    static let storeOperations = ["load", "apply", "regenerate", "invalidate", "changePrincipal"]

    /// How often a node given a factory of one's own passes the levels on (`update`).
    static let refreshMillis = 5_000

    /// The names of the two duration histograms (swift-metrics `Timer` labels).
    public static let durationMetricNames = ["session_node_request_duration_seconds", "session_store_operation_duration_seconds"]

    /// The bucket bounds of those histograms, 100 µs to 1 s: a `PrometheusMetricsFactory` of your
    /// own takes them in `durationHistogramBuckets`, for each of `durationMetricNames`.
    public static let durationBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2_500),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .seconds(1),
    ]

    /// The `node` label of every series.
    public let node: String
    private let factory: any MetricsFactory
    private let requests: [ManagedAtomicLazyReference<CoreMetrics.Counter>]
    private let requestLatency: CoreMetrics.Timer
    private let storeLatency: [ManagedAtomicLazyReference<CoreMetrics.Timer>]
    private let storeErrors: [CoreMetrics.Counter]
    private let levels: Mutex<Levels>
    private let principalSessions: Recorder
    private let events: [CoreMetrics.Counter]

    /// Made with `factory`, every series labelled `node`.
    public init(node: String, factory: any MetricsFactory) {
        self.node = node
        self.factory = factory
        requests = (0..<(Self.routes.count * Self.methods.count * Self.statuses.count)).map { _ in
            ManagedAtomicLazyReference()
        }
        requestLatency = CoreMetrics.Timer(
            label: "session_node_request_duration_seconds", dimensions: [("node", node)], factory: factory)
        storeLatency = Self.storeOperations.map { _ in ManagedAtomicLazyReference() }
        storeErrors = Self.storeOperations.map {
            CoreMetrics.Counter(label: "session_store_errors_total", dimensions: [("node", node), ("operation", $0)], factory: factory)
        }
        levels = Mutex(Levels())
        principalSessions = Recorder(label: "session_principal_sessions", dimensions: [("node", node)], factory: factory)
        events = SessionEvent.Kind.allCases.map {
            CoreMetrics.Counter(label: "session_events_total", dimensions: [("node", node), ("kind", $0.rawValue)], factory: factory)
        }
    }

    /// Counts a session event this node delivered.
    func recordEvent(_ kind: SessionEvent.Kind) {
        if let i = SessionEvent.Kind.allCases.firstIndex(of: kind) { events[i].increment() }
    }

    /// Records how many sessions a user holds (at each listing of them).
    func recordPrincipalSessions(_ count: Int) { principalSessions.record(count) }


    func recordRequest(method: String, route: String, status: Int, nanos: UInt64) {
        // A scan of a few short names: cheaper than hashing the request's strings for a dictionary.
        let r = Self.routes.firstIndex(of: route) ?? Self.routes.count - 1
        let m = Self.methods.firstIndex(of: method) ?? Self.methods.count - 1
        let s = Self.statuses.firstIndex(of: status) ?? Self.statuses.count - 1
        let index = (r * Self.methods.count + m) * Self.statuses.count + s
        let counter = requests[index].load() ?? requests[index].storeIfNilThenLoad(makeRequestCounter(r, m, s))
        counter.increment()
        requestLatency.recordNanoseconds(Int64(truncatingIfNeeded: nanos))
    }

    private func makeRequestCounter(_ r: Int, _ m: Int, _ s: Int) -> CoreMetrics.Counter {
        let status = Self.statuses[s] == 0 ? "other" : String(Self.statuses[s])
        return CoreMetrics.Counter(
            label: "session_node_requests_total",
            dimensions: [("node", node), ("method", Self.methods[m]), ("route", Self.routes[r]), ("status", status)],
            factory: factory)
    }

    func recordStore(operation: String, nanos: UInt64, failed: Bool) {
        guard let i = Self.storeOperations.firstIndex(of: operation) else { return }
        let timer =
            storeLatency[i].load()
            ?? storeLatency[i].storeIfNilThenLoad(
                CoreMetrics.Timer(
                    label: "session_store_operation_duration_seconds",
                    dimensions: [("node", node), ("operation", Self.storeOperations[i])], factory: factory))
        timer.recordNanoseconds(Int64(truncatingIfNeeded: nanos))
        if failed { storeErrors[i].increment() }
    }

    /// The levels read from the store: sessions held (nil: the store keeps none, e.g. Redis) and
    /// idempotency records. Before each `/metrics` answer, and every few seconds with a factory of one's own.
    public func update(sessions: Int?, idempotency: IdempotencyRecordStats?) {
        levels.withLock { levels in
            if let sessions {
                levels.sessions = levels.sessions ?? gauge("session_store_sessions", [])
                levels.sessions?.record(sessions)
            }
            guard let idempotency else { return }
            if levels.idempotency == nil {
                levels.idempotency = IdempotencyLevels(
                    sessionRecords: gauge("session_idempotency_records", [("scope", "session")]),
                    anonymousRecords: gauge("session_idempotency_records", [("scope", "anonymous")]),
                    bytes: gauge("session_idempotency_record_bytes", []),
                    evictions: FollowedTotal(
                        CoreMetrics.Counter(
                            label: "session_idempotency_evictions_total", dimensions: [("node", node)], factory: factory)))
            }
            levels.idempotency?.sessionRecords.record(idempotency.records - idempotency.anonymousRecords)
            levels.idempotency?.anonymousRecords.record(idempotency.anonymousRecords)
            levels.idempotency?.bytes.record(idempotency.bytes)
            levels.idempotency?.evictions.follow(idempotency.evictions)
        }
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)]) -> Gauge {
        Gauge(label: label, dimensions: [("node", node)] + dimensions, factory: factory)
    }

    private struct Levels {
        var sessions: Gauge?
        var idempotency: IdempotencyLevels?
    }

    private struct IdempotencyLevels {
        var sessionRecords: Gauge
        var anonymousRecords: Gauge
        var bytes: Gauge
        var evictions: FollowedTotal
    }
}


/// A store wrapper that times every session call into `NodeMetrics`.
public struct InstrumentedSessionStore: WrappingSessionStore {
    public let base: any SessionStore & IdempotencyStore
    let metrics: NodeMetrics

    public init(_ base: any SessionStore & IdempotencyStore, metrics: NodeMetrics) {
        self.base = base
        self.metrics = metrics
    }

    public func around<T>(_ operation: String, session id: SessionID, _ body: () throws -> T) throws -> T {
        let start = monotonicNanos()
        do {
            let result = try body()
            metrics.recordStore(operation: operation, nanos: monotonicNanos() - start, failed: false)
            return result
        } catch {
            metrics.recordStore(operation: operation, nanos: monotonicNanos() - start, failed: true)
            throw error
        }
    }
}
