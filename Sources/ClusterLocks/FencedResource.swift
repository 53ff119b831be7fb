import Synchronization

/// A resource that checks fencing tokens, for tests and the lock benchmark:
/// it counts the writes that reached it and which of them came out of turn
/// (carrying a smaller token than one it had already seen: a holder that
/// stalled past its lease while another took the lock).
///
/// `fenced` refuses those writes, as a storage service that checks tokens
/// does; unfenced it takes them and counts them, which shows what a lock
/// alone lets through.
public final class FencedResource: Sendable {
    public struct Counts: Sendable, Equatable {
        /// Writes taken.
        public var accepted = 0
        /// Writes taken although an earlier write carried a larger token (unfenced only).
        public var acceptedOutOfTurn = 0
        /// Writes refused for their token (fenced only).
        public var refused = 0
        /// The largest token seen.
        public var highestToken: Int64 = 0
    }

    /// Whether writes with a token below the highest seen are refused.
    public let fenced: Bool
    private let counts = Mutex(Counts())

    public init(fenced: Bool) {
        self.fenced = fenced
    }

    /// A write carrying `fencingToken`: false when refused.
    public func write(fencingToken: Int64) -> Bool {
        counts.withLock { counts in
            let outOfTurn = fencingToken < counts.highestToken
            if outOfTurn && fenced {
                counts.refused += 1
                return false
            }
            if outOfTurn { counts.acceptedOutOfTurn += 1 }
            counts.accepted += 1
            counts.highestToken = max(counts.highestToken, fencingToken)
            return true
        }
    }

    public var snapshot: Counts { counts.withLock { $0 } }
}
