import Dispatch
import NIOPosix
import SessionCore
import Synchronization

/// Exclusive mode for async handlers: runs an async body while a
/// `SessionRequestLock` (for example `RedisSessionLock`) holds the session.
///
/// `SessionRequestLock.withExclusiveAccess` is synchronous: it takes the
/// lock, runs a closure and releases the lock on the same thread (renewing
/// the lease meanwhile). An async handler cannot run inside that closure, so
/// a thread of a dedicated pool ("lock holders") takes the lock and parks
/// until the handler and the commit are done, then releases it. The
/// holders are separate from the store executor so a holder never waits for
/// a thread that only a holder could free. Each request of a session with
/// the lock costs one parked thread while it runs; when every holder is busy
/// further requests queue for one.
public final class ExclusiveAccess: Sendable {
    /// The lock that serializes a session's requests.
    public let lock: any SessionRequestLock
    /// Threads that hold locks while handlers run.
    public let holders: NIOThreadPool

    /// A lock with `holderThreads` holder threads (started at once, stopped by `shutdown()`).
    public init(lock: any SessionRequestLock, holderThreads: Int = 64) {
        precondition(holderThreads > 0, "exclusive access needs at least one holder thread")
        self.lock = lock
        holders = NIOThreadPool(numberOfThreads: holderThreads)
        holders.start()
    }

    /// Stops the holder threads.
    public func shutdown() async throws {
        try await holders.shutdownGracefully()
    }

    /// Runs `body` holding session `id`'s lock. When the lock is not granted
    /// in time this throws the core's 503 `session_busy` answer (as a
    /// `SessionErrorAnswer`); when its backend is down, the lock's
    /// `SessionStoreError(.unavailable)`. Errors of `body` pass through.
    public func run<T>(_ id: SessionID, _ body: () async throws -> T) async throws -> T {
        let granted = OneShot()
        let finished = OneShot()
        let release = DispatchSemaphore(value: 0)
        let lock = lock
        holders.submit { state in
            guard case .active = state else {
                let error = SessionStoreError(.unavailable, "the session lock holders are shut down")
                granted.fulfill(.failure(error))
                finished.fulfill(.failure(error))
                return
            }
            do {
                try lock.withExclusiveAccess(to: id) {
                    granted.fulfill(.success(()))
                    release.wait()
                }
                finished.fulfill(.success(()))
            } catch {
                granted.fulfill(.failure(error))  // ignored once granted
                finished.fulfill(.failure(error))
            }
        }
        do {
            try await granted.wait()
        } catch let busy as SessionBusyError {
            throw SessionErrorAnswer(busy)
        }
        let result: T
        do {
            result = try await body()
        } catch {
            release.signal()
            try? await finished.wait()
            throw error
        }
        release.signal()
        try? await finished.wait()  // released before the response goes out: the next request of the session does not wait for it
        return result
    }
}

/// A result set once and awaited by one task.
final class OneShot: Sendable {
    private struct State {
        var result: Result<Void, any Error>?
        var waiter: CheckedContinuation<Void, any Error>?
    }

    private let state = Mutex(State())

    /// Sets the result (only the first call counts) and wakes the waiter.
    func fulfill(_ result: Result<Void, any Error>) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            guard s.result == nil else { return nil }
            s.result = result
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(with: result)
    }

    /// Waits for the result.
    func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let ready = state.withLock { s -> Result<Void, any Error>? in
                if let result = s.result { return result }
                s.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }
}
