import MiniHTTP
import SessionCore
import Synchronization
import Dispatch

/// Counters and latency histograms of a node, in Prometheus text format.
public final class NodeMetrics: Sendable {
    /// Upper bounds of the latency buckets, in seconds.
    static let bucketBounds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]

    struct Histogram {
        var buckets = [Int](repeating: 0, count: NodeMetrics.bucketBounds.count)
        var count = 0
        var sum = 0.0

        mutating func record(seconds: Double) {
            count += 1
            sum += seconds
            if let i = NodeMetrics.bucketBounds.firstIndex(where: { seconds <= $0 }) { buckets[i] += 1 }
        }
    }

    struct RequestKey: Hashable, Comparable {
        var method: String
        var route: String
        var status: Int
        static func < (a: RequestKey, b: RequestKey) -> Bool {
            (a.method, a.route, a.status) < (b.method, b.route, b.status)
        }
    }

    struct State {
        var requests: [RequestKey: Int] = [:]
        var requestLatency = Histogram()
        var storeLatency: [String: Histogram] = [:]
        var storeErrors: [String: Int] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    func recordRequest(method: String, route: String, status: Int, seconds: Double) {
        state.withLock {
            $0.requests[RequestKey(method: method, route: route, status: status), default: 0] += 1
            $0.requestLatency.record(seconds: seconds)
        }
    }

    func recordStore(operation: String, seconds: Double, failed: Bool) {
        state.withLock {
            $0.storeLatency[operation, default: Histogram()].record(seconds: seconds)
            if failed { $0.storeErrors[operation, default: 0] += 1 }
        }
    }

    /// Total requests served.
    public var requestsServed: Int { state.withLock { $0.requests.values.reduce(0, +) } }

    /// The Prometheus exposition text.
    public func render(node: String, sessions: Int?) -> String {
        let s = state.withLock { $0 }
        var out = ""
        out += "# HELP session_node_requests_total Requests served, by method, route and status.\n"
        out += "# TYPE session_node_requests_total counter\n"
        for (key, count) in s.requests.sorted(by: { $0.key < $1.key }) {
            out += "session_node_requests_total{node=\(jsonQuoted(node)),method=\(jsonQuoted(key.method)),"
            out += "route=\(jsonQuoted(key.route)),status=\"\(key.status)\"} \(count)\n"
        }
        out += "# HELP session_node_request_duration_seconds Time to answer a request.\n"
        out += "# TYPE session_node_request_duration_seconds histogram\n"
        out += histogramLines("session_node_request_duration_seconds", "node=\(jsonQuoted(node))", s.requestLatency)
        out += "# HELP session_store_operation_duration_seconds Time of session store calls.\n"
        out += "# TYPE session_store_operation_duration_seconds histogram\n"
        for (op, h) in s.storeLatency.sorted(by: { $0.key < $1.key }) {
            out += histogramLines(
                "session_store_operation_duration_seconds", "node=\(jsonQuoted(node)),operation=\(jsonQuoted(op))", h)
        }
        out += "# HELP session_store_errors_total Failed session store calls.\n"
        out += "# TYPE session_store_errors_total counter\n"
        for (op, n) in s.storeErrors.sorted(by: { $0.key < $1.key }) {
            out += "session_store_errors_total{node=\(jsonQuoted(node)),operation=\(jsonQuoted(op))} \(n)\n"
        }
        if let sessions {
            out += "# HELP session_store_sessions Sessions held by this node's store.\n"
            out += "# TYPE session_store_sessions gauge\n"
            out += "session_store_sessions{node=\(jsonQuoted(node))} \(sessions)\n"
        }
        return out
    }

    private func histogramLines(_ name: String, _ labels: String, _ h: Histogram) -> String {
        var out = ""
        var cumulative = 0
        for (i, bound) in NodeMetrics.bucketBounds.enumerated() {
            cumulative += h.buckets[i]
            out += "\(name)_bucket{\(labels),le=\"\(bound)\"} \(cumulative)\n"
        }
        out += "\(name)_bucket{\(labels),le=\"+Inf\"} \(h.count)\n"
        out += "\(name)_sum{\(labels)} \(h.sum)\n"
        out += "\(name)_count{\(labels)} \(h.count)\n"
        return out
    }
}

/// A store wrapper that times every call into `NodeMetrics`.
public struct InstrumentedSessionStore: SessionStore {
    public let base: any SessionStore
    let metrics: NodeMetrics

    public init(_ base: any SessionStore, metrics: NodeMetrics) {
        self.base = base
        self.metrics = metrics
    }

    public var expiry: SessionExpiry { base.expiry }

    private func timed<T>(_ operation: String, _ body: () throws -> T) throws -> T {
        let start = monotonicNanos()
        do {
            let result = try body()
            metrics.recordStore(operation: operation, seconds: Double(monotonicNanos() - start) / 1e9, failed: false)
            return result
        } catch {
            metrics.recordStore(operation: operation, seconds: Double(monotonicNanos() - start) / 1e9, failed: true)
            throw error
        }
    }

    public func load(_ id: SessionID) throws -> SessionSnapshot? { try timed("load") { try base.load(id) } }
    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? { try timed("apply") { try base.apply(delta) } }
    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        try timed("regenerate") { try base.regenerate(id, to: newID) }
    }
    public func invalidate(_ id: SessionID) throws { try timed("invalidate") { try base.invalidate(id) } }
}

func monotonicNanos() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
