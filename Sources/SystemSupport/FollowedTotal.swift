import CoreMetrics

/// A swift-metrics counter that follows a running total kept elsewhere (an atomic a hot path
/// increments): `follow` adds what the total grew by since the last call (a total that went
/// down starts over from there). One owner at a time calls `follow`.
public struct FollowedTotal {
    /// The counter the growth goes to.
    public let counter: CoreMetrics.Counter
    private var last = 0

    /// Follows a total into `counter`.
    public init(_ counter: CoreMetrics.Counter) { self.counter = counter }

    /// Adds to the counter what `total` grew by since the last call.
    public mutating func follow(_ total: Int) {
        if total > last { counter.increment(by: total - last) }
        last = total
    }
}
