#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import Synchronization
import SystemSupport

/// Runs handlers that may block, off the event loops.
final class HandlerPool: Sendable {
    private let jobs = Mutex<(queue: [@Sendable () -> Void], head: Int)>(([], 0))
    private let available = DispatchSemaphore(value: 0)
    private let threads: Int

    init(threads: Int) {
        self.threads = threads
        for _ in 0..<threads {
            startThread { [self] in
                while let job = next() { job() }
            }
        }
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        jobs.withLock { state in
            if state.head > 256 && state.head * 2 > state.queue.count {
                state.queue.removeFirst(state.head)
                state.head = 0
            }
            state.queue.append(job)
        }
        available.signal()
    }

    private func next() -> (@Sendable () -> Void)? {
        available.wait()
        return jobs.withLock { state in
            guard state.head < state.queue.count else { return nil }  // stop signal
            defer { state.head += 1 }
            return state.queue[state.head]
        }
    }

    /// Lets queued jobs finish, then ends the threads.
    func stop() {
        for _ in 0..<threads { available.signal() }
    }
}
