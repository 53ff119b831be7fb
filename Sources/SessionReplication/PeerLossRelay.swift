import SessionCore
import Synchronization

/// What one peer changed over the last `windowNanos`: the sessions and
/// idempotency keys, so that their current state can be passed on to the
/// other peers if that peer disconnects.
///
/// A node that dies while sending a change may have reached some peers and
/// not others; without a relay those others would miss it until that
/// session's attribute is written again. Every survivor sends the others its
/// full state of each session the dead peer touched lately, and each record
/// it completed (merging is idempotent, so copies cost only bandwidth), and
/// the peers converge within a round trip of the loss. Full states, not the
/// peer's raw changes: one per session, however often it was written, so a
/// relay stays small and does not hold up the changes that follow it.
struct RecentChanges {
    let windowNanos: UInt64
    let maxEntries: Int
    private var sessions: [SessionID: UInt64] = [:]
    private var keys: [String: UInt64] = [:]
    private var order: [(at: UInt64, item: Item)] = []
    private var head = 0
    /// When the last items were noted.
    private var lastNoted: UInt64 = 0
    /// When entries still within the window were last forgotten for `maxEntries`.
    private var overflowedAt: UInt64?

    enum Item {
        case session(SessionID)
        case key(String)
    }

    init(windowNanos: UInt64, maxEntries: Int) {
        self.windowNanos = windowNanos
        self.maxEntries = maxEntries
    }

    /// Notes the sessions and keys of items received from the peer at `now`.
    mutating func note(_ items: [ReplicationItem], now: UInt64) {
        guard windowNanos > 0, !items.isEmpty else { return }
        lastNoted = now
        for item in items {
            switch item {
            case .session(let update):
                sessions[update.id] = now
                order.append((now, .session(update.id)))
                if let key = update.idempotencyRecord?.key {
                    keys[key] = now
                    order.append((now, .key(key)))
                }
            case .record(let record):
                keys[record.record.key] = now
                order.append((now, .key(record.record.key)))
            }
        }
        evict(now: now)
    }

    /// The sessions and keys touched within the window before the peer's
    /// last change (a peer that dies silently is found out only at the idle
    /// timeout, maybe after the window), and whether that is all of them.
    mutating func lastChanges() -> (sessions: [SessionID], keys: [String], complete: Bool) {
        evict(now: lastNoted)
        let complete = overflowedAt.map { lastNoted - $0 > windowNanos } ?? true
        return (Array(sessions.keys), Array(keys.keys), complete)
    }

    private mutating func evict(now: UInt64) {
        while head < order.count && (now - order[head].at > windowNanos || sessions.count + keys.count > maxEntries) {
            let (at, item) = order[head]
            if now - at <= windowNanos { overflowedAt = now }
            switch item {
            case .session(let id): if sessions[id] == at { sessions[id] = nil }
            case .key(let key): if keys[key] == at { keys[key] = nil }
            }
            head += 1
        }
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }
}

/// What tells a node that a peer may just have died: when its connections
/// were lost, and when each peer last sent anything. Sync mode looks up an
/// `Idempotency-Key` on the peers only while some peer is in doubt
/// (`ReplicationNode.mayHaveLostAPeer`); otherwise every change of every
/// peer has arrived, or been relayed, and a key unknown here is unknown.
final class PeerHealth: Sendable {
    struct State {
        /// The last inbound connection loss.
        var lastLossAt: UInt64?
        /// By peer node id: when its own connection to this node last delivered frames.
        var lastHeard: [UInt32: UInt64] = [:]
    }

    private let state = Mutex(State())

    func heard(from node: UInt32, at now: UInt64) {
        state.withLock { $0.lastHeard[node] = now }
    }

    /// Peer `node`'s connection to this node ended (it is no longer
    /// expected to speak; `lastLossAt` covers it for the window).
    func lostInbound(from node: UInt32, at now: UInt64) {
        state.withLock {
            $0.lastLossAt = now
            $0.lastHeard[node] = nil
        }
    }

    /// How many peers other than `node` delivered frames within `windowNanos` of `now`.
    func heardRecently(excluding node: UInt32, now: UInt64, windowNanos: UInt64) -> Int {
        state.withLock { s in
            s.lastHeard.filter { $0.key != node && ($0.value >= now || now - $0.value < windowNanos) }.count
        }
    }

    /// Whether an inbound connection ended within `windowNanos`, or a peer
    /// has said nothing (not even its pings) for `silenceNanos`. Times
    /// noted after `now` (by another thread meanwhile) count as recent.
    func inDoubt(now: UInt64, windowNanos: UInt64, silenceNanos: UInt64) -> Bool {
        state.withLock { s in
            if let lost = s.lastLossAt, lost >= now || now - lost < windowNanos { return true }
            return s.lastHeard.values.contains { now > $0 && now - $0 > silenceNanos }
        }
    }
}
