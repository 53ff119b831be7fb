import Synchronization

/// The lame-duck period of an example node's graceful stop, as in
/// `session-cluster node --drain-delay-ms`.
///
/// Closing a kept-alive connection is racy: a balancer may be writing a request
/// on it at that very moment, and then cannot know whether the request was read.
/// So on SIGTERM a node first stays a lame duck for the delay: `/healthz` answers
/// 503 `draining` (`DemoAPI.health`), every response carries `Connection: close`,
/// and the listener stays open, while the balancer's health checks take the node
/// out and it closes its pooled connections; only then does the server shut down.
public final class LameDuck: Sendable {
    /// How long `drain()` keeps the node a lame duck, in milliseconds.
    public let delayMillis: Int
    private let draining = Atomic<Bool>(false)
    private let sleep: @Sendable (Int) async -> Void

    /// A node that is not draining yet; `delayMillis` is clamped to 0 or more.
    /// - Parameter sleep: waits the given milliseconds (`Task.sleep`, ending early when the
    ///   task is cancelled); tests pass one that records the wait instead.
    public init(
        delayMillis: Int,
        sleep: @escaping @Sendable (Int) async -> Void = { millis in try? await Task.sleep(for: .milliseconds(millis)) }
    ) {
        self.delayMillis = max(0, delayMillis)
        self.sleep = sleep
    }

    /// True once draining began (for good).
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Marks the node draining; true the first time.
    @discardableResult
    public func beginDraining() -> Bool {
        !draining.exchange(true, ordering: .relaxed)
    }

    /// Marks the node draining, then waits `delayMillis` (less if the task is
    /// cancelled). The server keeps serving meanwhile; shut it down afterwards.
    public func drain() async {
        beginDraining()
        guard delayMillis > 0 else { return }
        await sleep(delayMillis)
    }
}
