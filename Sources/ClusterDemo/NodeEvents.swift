import Logging
import SessionCore
import Synchronization

/// The demo node's `SessionEventListener`: logs each event (level info),
/// counts it in `session_events_total{node,kind}`, and keeps the last
/// `capacity` for `GET /api/events`, which shows a user the events of their
/// own sessions that this node delivered (each event is delivered by one
/// node of the cluster: a page polling through the balancer sees them all).
public final class NodeEvents: SessionEventListener {
    /// Events kept for `/api/events`.
    public static let capacity = 200

    private let logger: Logger
    private let metrics: NodeMetrics
    private let kept = Mutex<[SessionEvent]>([])

    init(logger: Logger, metrics: NodeMetrics) {
        self.logger = logger
        self.metrics = metrics
    }

    public func sessionEvent(_ event: SessionEvent) {
        metrics.recordEvent(event.kind)
        logger.info(
            "session event",
            metadata: [
                "event": "\(event.kind.rawValue)", "session": "\(event.handle)", "user": "\(event.principal ?? "-")",
            ])
        kept.withLock { recent in
            recent.append(event)
            if recent.count > Self.capacity { recent.removeFirst(recent.count - Self.capacity) }
        }
    }

    /// The kept events, oldest first.
    public var recent: [SessionEvent] { kept.withLock { $0 } }
}
