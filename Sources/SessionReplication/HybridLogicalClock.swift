import SessionCore
import Synchronization

/// A hybrid logical clock timestamp: totally ordered by (millis, counter, node).
///
/// Every change a node makes carries a stamp from its `HybridLogicalClock`;
/// no two changes anywhere in the cluster share one (the node id breaks ties).
package struct HLCStamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Wall-clock milliseconds since 1970 (or the largest seen, when the wall clock lags).
    public var millis: Int64
    /// Orders stamps within one millisecond.
    public var counter: UInt32
    /// The node that made the stamp.
    public var node: UInt32

    /// A stamp; clocks make them with `HybridLogicalClock.now()`.
    public init(millis: Int64, counter: UInt32 = 0, node: UInt32) {
        self.millis = millis
        self.counter = counter
        self.node = node
    }

    /// Older than every stamp a clock issues.
    public static let zero = HLCStamp(millis: 0, counter: 0, node: 0)

    public static func < (a: HLCStamp, b: HLCStamp) -> Bool {
        (a.millis, a.counter, a.node) < (b.millis, b.counter, b.node)
    }

    /// The stamp as one number for `SessionSnapshot.version`: millis in the
    /// high 42 bits, counter (saturated) in the low 22. Never decreases as
    /// stamps grow, but stamps of different nodes in one millisecond may share it.
    public var packedVersion: UInt64 {
        let m = UInt64(clamping: min(max(millis, 0), (1 << 42) - 1))
        return m << 22 | UInt64(min(counter, (1 << 22) - 1))
    }

    public var description: String { "\(millis).\(counter)@\(node)" }

    /// Parses "millis.counter.node" (a read token); nil when malformed.
    public init?(token: String) {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 20 }),
            let millis = Int64(parts[0]), millis >= 0, let counter = UInt32(parts[1]), let node = UInt32(parts[2])
        else { return nil }
        self.init(millis: millis, counter: counter, node: node)
    }

    /// Writes 16 bytes: millis, counter, node.
    public func encode(into w: inout WireWriter) {
        w.i64(millis)
        w.u32(counter)
        w.u32(node)
    }

    /// Reads what `encode(into:)` wrote.
    public init(from r: inout WireReader) throws(WireError) {
        self.init(millis: try r.i64(), counter: try r.u32(), node: try r.u32())
    }
}

/// One node's hybrid logical clock: `now()` follows the wall clock but never
/// repeats or goes backwards, even when the wall clock stalls or jumps back,
/// and `observe(_:)` moves it past stamps received from peers.
package final class HybridLogicalClock: Sendable {
    /// This node's id, part of every stamp it issues.
    public let node: UInt32
    /// Observed stamps further ahead of the wall clock than this are refused.
    public let maxForwardDriftMillis: Int64
    private let wallClock: @Sendable () -> Int64
    /// The (millis, counter) of the last stamp issued or observed.
    private let last = Mutex<(millis: Int64, counter: UInt32)>((0, 0))

    /// A clock for `node`, reading milliseconds from `wallClock` (the system clock by default).
    public init(
        node: UInt32, maxForwardDriftMillis: Int64 = 60_000,
        wallClock: @escaping @Sendable () -> Int64 = SessionClock.system.nowMillis
    ) {
        self.node = node
        self.maxForwardDriftMillis = maxForwardDriftMillis
        self.wallClock = wallClock
    }

    /// A new stamp, greater than every stamp this clock issued or observed before.
    public func now() -> HLCStamp {
        let wall = wallClock()
        return last.withLock { last in
            if wall > last.millis {
                last = (wall, 0)
            } else if last.counter == .max {
                last = (last.millis + 1, 0)
            } else {
                last.counter += 1
            }
            return HLCStamp(millis: last.millis, counter: last.counter, node: node)
        }
    }

    /// Moves the clock past a stamp received from a peer, so the next `now()`
    /// is greater. Returns false, changing nothing, when the stamp is more
    /// than `maxForwardDriftMillis` ahead of the wall clock (a peer with a
    /// broken clock must not drag this one into the future).
    @discardableResult
    public func observe(_ stamp: HLCStamp) -> Bool {
        let (ahead, overflow) = stamp.millis.subtractingReportingOverflow(wallClock())
        if overflow || ahead > maxForwardDriftMillis { return false }
        last.withLock { last in
            if (stamp.millis, stamp.counter) > (last.millis, last.counter) { last = (stamp.millis, stamp.counter) }
        }
        return true
    }
}
