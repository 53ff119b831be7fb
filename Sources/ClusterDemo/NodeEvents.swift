import Logging
import SessionCore
import Synchronization
import SystemSupport

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
    private let recent = Mutex<[SessionEvent]>([])

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
        recent.withLock { recent in
            recent.append(event)
            if recent.count > Self.capacity { recent.removeFirst(recent.count - Self.capacity) }
        }
    }

    /// The kept events of `principal`, oldest first.
    public func events(of principal: String) -> [SessionEvent] {
        recent.withLock { $0.filter { $0.principal == principal } }
    }

    /// `{"node", "user", "events": [{"kind", "handle", "previous", "at"}]}` for the session's user, or 401.
    func answer(for session: Session, node: String) -> HTTPAnswer {
        guard let user = session.principal else {
            return HTTPAnswer(status: 401, body: String(decoding: SessionErrorAnswer(
                status: 401, code: "not_logged_in", message: "log in first (POST /api/login)").body, as: UTF8.self))
        }
        let list = events(of: user).map { event in
            "{\"kind\":\"\(event.kind.rawValue)\",\"handle\":\(jsonQuoted(event.handle.rawValue)),"
                + "\"previous\":\(event.previous.map { jsonQuoted($0.rawValue) } ?? "null"),\"at\":\(event.atMillis)}"
        }
        return HTTPAnswer(
            status: 200,
            body: "{\"node\":\(jsonQuoted(node)),\"user\":\(jsonQuoted(user)),\"events\":[\(list.joined(separator: ","))]}")
    }

    struct HTTPAnswer {
        var status: Int
        var body: String
    }
}
