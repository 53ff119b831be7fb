import Synchronization

/// One run of a peer: its node id and the incarnation its hello announced.
struct PeerIdentity: Sendable, Hashable, CustomStringConvertible {
    var nodeID: UInt32
    var incarnation: UInt64

    init(nodeID: UInt32, incarnation: UInt64) {
        self.nodeID = nodeID
        self.incarnation = incarnation
    }

    init(_ hello: HelloMessage) { self.init(nodeID: hello.nodeID, incarnation: hello.incarnation) }

    var description: String { "node \(nodeID) incarnation \(String(incarnation, radix: 16))" }
}

/// What this node knows of the cluster's membership (docs/replication.md,
/// *Membership*): its own incarnation, renewed at every rejoin, and the
/// incarnations of peers it declared dead, whose changes it refuses.
///
/// A node is declared dead when it has been silent, or has not acknowledged
/// a change, for `fenceAfterMillis` (sync mode with a `majority` quorum):
/// frozen or cut off, it may wake up or reconnect with changes its clients
/// were told failed (or never heard of) and have since retried elsewhere.
/// Refusing its incarnation makes it rejoin: drop its state, take a ready
/// peer's, and come back under a new incarnation.
final class Membership: Sendable {
    /// The most fenced incarnations remembered per node (older ones are forgotten: they never reconnect).
    static let fencedPerNode = 8

    private struct State {
        var hello: HelloMessage
        var fenced: [UInt32: [UInt64]] = [:]
    }

    private let state: Mutex<State>
    private let rejoining = Atomic<Bool>(false)

    init(hello: HelloMessage) { state = Mutex(State(hello: hello)) }

    /// While true this node is rejoining: its links send control frames only
    /// (its own state is about to be replaced, not to be replicated).
    var isRejoining: Bool {
        get { rejoining.load(ordering: .acquiring) }
        set { rejoining.store(newValue, ordering: .releasing) }
    }

    /// This node's hello (each connection renews its nonce).
    var hello: HelloMessage { state.withLock { $0.hello } }

    var incarnation: UInt64 { state.withLock { $0.hello.incarnation } }

    /// Takes a new incarnation (a rejoin); returns it.
    func renewIncarnation() -> UInt64 {
        state.withLock { s in
            var next = UInt64.random(in: 1...UInt64.max)
            while next == s.hello.incarnation { next = UInt64.random(in: 1...UInt64.max) }
            s.hello.incarnation = next
            return next
        }
    }

    /// Declares `peer` dead; false when it already was.
    @discardableResult
    func fence(_ peer: PeerIdentity) -> Bool {
        state.withLock { s in
            var list = s.fenced[peer.nodeID, default: []]
            guard !list.contains(peer.incarnation) else { return false }
            list.append(peer.incarnation)
            if list.count > Self.fencedPerNode { list.removeFirst(list.count - Self.fencedPerNode) }
            s.fenced[peer.nodeID] = list
            return true
        }
    }

    func isFenced(_ peer: PeerIdentity) -> Bool {
        state.withLock { $0.fenced[peer.nodeID]?.contains(peer.incarnation) ?? false }
    }

    /// How many incarnations are fenced now.
    var fencedCount: Int { state.withLock { $0.fenced.values.reduce(0) { $0 + $1.count } } }
}
