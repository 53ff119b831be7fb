import NIOPosix

/// Runs blocking session-store calls on a bounded pool of threads, so they
/// never run on a framework's event loops or on Swift's cooperative pool.
///
/// Every store of the core package is synchronous: `RedisSessionStore` waits
/// for Redis, `ReplicatedSessionStore` may wait for peers (sync mode, read
/// token catch-up). An `await executor.run { ... }` parks the calling task
/// (no thread is held while it waits) and runs the closure on one of the
/// pool's threads. When every thread is busy, further calls queue up in
/// order; the event loops and the cooperative pool stay free either way.
public final class BlockingExecutor: Sendable {
    /// The pool the calls run on.
    public let threadPool: NIOThreadPool
    private let ownsPool: Bool

    /// An executor over its own pool of `threads` threads, started at once.
    /// Call `shutdown()` when done with it.
    public init(threads: Int) {
        precondition(threads > 0, "a blocking executor needs at least one thread")
        threadPool = NIOThreadPool(numberOfThreads: threads)
        threadPool.start()
        ownsPool = true
    }

    /// An executor over a pool someone else owns and starts (for example
    /// Vapor's `app.threadPool`); `shutdown()` leaves it alone.
    public init(threadPool: NIOThreadPool) {
        self.threadPool = threadPool
        ownsPool = false
    }

    /// The process-wide executor the adapters use unless told otherwise: 64
    /// threads (as many as a core node's handler threads for the Redis and
    /// replicate strategies), started on first use, never shut down.
    public static let shared = BlockingExecutor(threads: 64)

    /// Runs `body` on one of the pool's threads and returns its result.
    /// Throws `NIOThreadPoolError.ThreadPoolInactive` once the pool is shut down.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await threadPool.runIfActive(body)
    }

    /// Stops the pool when this executor owns it (queued calls fail).
    public func shutdown() async throws {
        if ownsPool { try await threadPool.shutdownGracefully() }
    }
}
