import NIOPosix
import SessionCore

/// Exclusive mode for async handlers: holds a `SessionRequestLock`'s lease
/// (for example `RedisSessionLock`'s) while an async body runs.
///
/// Acquiring may wait (another request of the session holds it) and calls
/// the lock's backend, so it runs on `acquires`, a pool of its own apart
/// from the store executor: a request waiting for a session never takes the
/// thread that the session's holder needs for its store calls. Releases run
/// on `releases`, so a holder's release never queues behind requests that
/// wait for that very release. Once granted, no thread is held while the
/// body runs (the lock renews the lease in the background); the lease is
/// released when the body returns or throws.
public final class ExclusiveAccess: Sendable {
    /// The lock that serializes a session's requests.
    public let lock: any SessionRequestLock
    /// Where `acquire` runs (and waits).
    public let acquires: BlockingExecutor
    /// Where `release` runs.
    public let releases: BlockingExecutor

    /// A lock whose acquires run on `lockThreads` threads of their own and
    /// whose releases on two more (started at once, stopped by `shutdown()`).
    /// At most `lockThreads` requests wait for a session at once; further
    /// ones queue for a thread.
    public init(lock: any SessionRequestLock, lockThreads: Int = 64) {
        precondition(lockThreads > 0, "exclusive access needs at least one lock thread")
        self.lock = lock
        acquires = BlockingExecutor(threads: lockThreads)
        releases = BlockingExecutor(threads: 2)
    }

    /// Stops the lock threads.
    public func shutdown() async throws {
        try await acquires.shutdown()
        try await releases.shutdown()
    }

    /// Runs `body` holding session `id`'s lease. When the lock is not granted
    /// in time this throws the core's 503 `session_busy` answer (as a
    /// `SessionErrorAnswer`); when its backend is down, the lock's
    /// `SessionStoreError(.unavailable)`. Errors of `body` pass through.
    public func run<T>(_ id: SessionID, _ body: () async throws -> T) async throws -> T {
        let lock = lock
        let lease: SessionLockLease
        do {
            lease = try await acquires.run { try lock.acquire(id) }
        } catch let busy as SessionBusyError {
            throw SessionErrorAnswer(busy)
        } catch is NIOThreadPoolError.ThreadPoolInactive {
            throw SessionStoreError(.unavailable, "the session lock's threads are shut down")
        }
        let result: T
        do {
            result = try await body()
        } catch {
            await release(lease)
            throw error
        }
        await release(lease)  // before the response goes out: the session's next request does not wait for it
        return result
    }

    private func release(_ lease: SessionLockLease) async {
        do {
            try await releases.run { lease.release() }
        } catch {
            lease.release()  // the threads are shut down: release here
        }
    }
}
