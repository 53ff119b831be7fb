import Atomics
import Dispatch
import MiniHTTP
import SessionCore
import SystemSupport

/// Counters and latency histograms of a node, in Prometheus text format.
///
/// Every request records here, so everything is a lock-free atomic: a shared
/// lock was measured to be the node's bottleneck under load (a third of the
/// CPU in lock contention at 50 connections).
public final class NodeMetrics: Sendable {
    /// The routes counted by name; any other path counts as "other".
    static let routes = ["/", "/healthz", "/metrics", "/api/session", "/api/counter", "/api/login", "/api/logout", "other"]
    static let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "other"]
    static let statuses = [
        200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 500, 501, 502, 503, 504, 505, 0,
    ]
    static let storeOperations = ["load", "apply", "regenerate", "invalidate"]

    private let requests: [ManagedAtomic<Int>]
    private let requestLatency = AtomicHistogram()
    private let storeLatency: [AtomicHistogram]
    private let storeErrors: [ManagedAtomic<Int>]

    public init() {
        requests = (0..<(Self.routes.count * Self.methods.count * Self.statuses.count)).map { _ in ManagedAtomic(0) }
        storeLatency = Self.storeOperations.map { _ in AtomicHistogram() }
        storeErrors = Self.storeOperations.map { _ in ManagedAtomic(0) }
    }

    private static let routeIndex = Dictionary(uniqueKeysWithValues: routes.enumerated().map { ($1, $0) })
    private static let methodIndex = Dictionary(uniqueKeysWithValues: methods.enumerated().map { ($1, $0) })
    private static let statusIndex = Dictionary(uniqueKeysWithValues: statuses.enumerated().map { ($1, $0) })

    func recordRequest(method: String, route: String, status: Int, nanos: UInt64) {
        let r = Self.routeIndex[route] ?? Self.routes.count - 1
        let m = Self.methodIndex[method] ?? Self.methods.count - 1
        let s = Self.statusIndex[status] ?? Self.statuses.count - 1
        requests[(r * Self.methods.count + m) * Self.statuses.count + s].wrappingIncrement(ordering: .relaxed)
        requestLatency.record(nanos: nanos)
    }

    func recordStore(operation: String, nanos: UInt64, failed: Bool) {
        guard let i = Self.storeOperations.firstIndex(of: operation) else { return }
        storeLatency[i].record(nanos: nanos)
        if failed { storeErrors[i].wrappingIncrement(ordering: .relaxed) }
    }

    /// Total requests served.
    public var requestsServed: Int { requests.reduce(0) { $0 + $1.load(ordering: .relaxed) } }

    /// The Prometheus exposition text.
    public func render(node: String, sessions: Int?, idempotency: IdempotencyRecordStats? = nil) -> String {
        let nodeLabel = "node=\(jsonQuoted(node))"
        var out = ""
        out += "# HELP session_node_requests_total Requests served, by method, route and status.\n"
        out += "# TYPE session_node_requests_total counter\n"
        for (r, route) in Self.routes.enumerated() {
            for (m, method) in Self.methods.enumerated() {
                for (s, status) in Self.statuses.enumerated() {
                    let n = requests[(r * Self.methods.count + m) * Self.statuses.count + s].load(ordering: .relaxed)
                    guard n > 0 else { continue }
                    let statusText = status == 0 ? "other" : String(status)
                    out += "session_node_requests_total{\(nodeLabel),method=\(jsonQuoted(method)),"
                    out += "route=\(jsonQuoted(route)),status=\"\(statusText)\"} \(n)\n"
                }
            }
        }
        out += "# HELP session_node_request_duration_seconds Time to answer a request.\n"
        out += "# TYPE session_node_request_duration_seconds histogram\n"
        out += requestLatency.render("session_node_request_duration_seconds", labels: nodeLabel)
        out += "# HELP session_store_operation_duration_seconds Time of session store calls.\n"
        out += "# TYPE session_store_operation_duration_seconds histogram\n"
        for (i, op) in Self.storeOperations.enumerated() where storeLatency[i].count > 0 {
            out += storeLatency[i].render(
                "session_store_operation_duration_seconds", labels: "\(nodeLabel),operation=\(jsonQuoted(op))")
        }
        out += "# HELP session_store_errors_total Failed session store calls.\n"
        out += "# TYPE session_store_errors_total counter\n"
        for (i, op) in Self.storeOperations.enumerated() {
            out += "session_store_errors_total{\(nodeLabel),operation=\(jsonQuoted(op))} \(storeErrors[i].load(ordering: .relaxed))\n"
        }
        if let sessions {
            out += "# HELP session_store_sessions Sessions held by this node's store.\n"
            out += "# TYPE session_store_sessions gauge\n"
            out += "session_store_sessions{\(nodeLabel)} \(sessions)\n"
        }
        if let idempotency {
            out += "# HELP session_idempotency_records Idempotency records (claims and kept responses) held, by scope.\n"
            out += "# TYPE session_idempotency_records gauge\n"
            out += "session_idempotency_records{\(nodeLabel),scope=\"session\"} \(idempotency.records - idempotency.anonymousRecords)\n"
            out += "session_idempotency_records{\(nodeLabel),scope=\"anonymous\"} \(idempotency.anonymousRecords)\n"
            out += "# HELP session_idempotency_record_bytes Bytes of the idempotency records held.\n"
            out += "# TYPE session_idempotency_record_bytes gauge\n"
            out += "session_idempotency_record_bytes{\(nodeLabel)} \(idempotency.bytes)\n"
            out += "# HELP session_idempotency_evictions_total Idempotency records dropped to stay within the caps.\n"
            out += "# TYPE session_idempotency_evictions_total counter\n"
            out += "session_idempotency_evictions_total{\(nodeLabel)} \(idempotency.evictions)\n"
        }
        return out
    }
}

/// A Prometheus histogram of durations on atomics.
final class AtomicHistogram: Sendable {
    /// Upper bounds of the buckets, in nanoseconds.
    static let boundsNanos: [UInt64] = [
        100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
        100_000_000, 250_000_000, 1_000_000_000,
    ]
    private let buckets = AtomicHistogram.boundsNanos.map { _ in ManagedAtomic<Int>(0) }
    private let total = ManagedAtomic<Int>(0)
    private let sumNanos = ManagedAtomic<UInt64>(0)

    var count: Int { total.load(ordering: .relaxed) }

    func record(nanos: UInt64) {
        total.wrappingIncrement(ordering: .relaxed)
        sumNanos.wrappingIncrement(by: nanos, ordering: .relaxed)
        if let i = Self.boundsNanos.firstIndex(where: { nanos <= $0 }) {
            buckets[i].wrappingIncrement(ordering: .relaxed)
        }
    }

    func render(_ name: String, labels: String) -> String {
        var out = ""
        var cumulative = 0
        for (i, bound) in Self.boundsNanos.enumerated() {
            cumulative += buckets[i].load(ordering: .relaxed)
            out += "\(name)_bucket{\(labels),le=\"\(Double(bound) / 1e9)\"} \(cumulative)\n"
        }
        out += "\(name)_bucket{\(labels),le=\"+Inf\"} \(count)\n"
        out += "\(name)_sum{\(labels)} \(Double(sumNanos.load(ordering: .relaxed)) / 1e9)\n"
        out += "\(name)_count{\(labels)} \(count)\n"
        return out
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
