import Dispatch
import Synchronization
import SystemSupport

/// Extends a lease on a timer while its holder works (`DistributedLock.hold`).
final class LeaseKeeper: @unchecked Sendable {  // timer: set once in init; the rest behind a Mutex
    private struct State {
        var lease: LockLease
        /// Set by `stop()`: a renewal still in flight then fails quietly (the lock is being released).
        var stopped = false
    }

    private let timer: any DispatchSourceTimer
    private let state: Mutex<State>

    init(lock: DistributedLock, lease: LockLease, leaseMillis: Int, forMillis: Int) {
        state = Mutex(State(lease: lease))
        let interval = max(1, leaseMillis / 3)
        let giveUpAt = monotonicMillis() + Int64(forMillis)
        timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(
            deadline: .now() + .milliseconds(interval), repeating: .milliseconds(interval),
            leeway: .milliseconds(max(1, interval / 10)))
        let name = DistributedLock.loggable(lease.name)
        timer.setEventHandler { [weak self] in
            guard let self else { return }
            if monotonicMillis() >= giveUpAt {
                lock.logger.warning(
                    "stopped renewing a lock held longer than allowed; it ends with its lease",
                    metadata: ["lock": "\(name)", "held_ms_max": "\(forMillis)"])
                timer.cancel()
                return
            }
            guard let current = state.withLock({ $0.stopped ? nil : $0.lease }) else { return }
            do {
                let extended = try lock.extend(current, leaseMillis: leaseMillis)
                state.withLock { $0.lease = extended }
            } catch let error as LockError where error.code == .lost {
                if !state.withLock({ $0.stopped }) {
                    lock.logger.error("lost a lock while holding it (its lease ran out)", metadata: ["lock": "\(name)"])
                }
                timer.cancel()
            } catch {
                // The service is unreachable for now: the lease holds until it ends; try on the next tick.
                lock.logger.warning("could not extend a lock", metadata: ["lock": "\(name)", "error": "\(error)"])
            }
        }
        timer.resume()
    }

    func stop() {
        state.withLock { $0.stopped = true }
        timer.cancel()
    }

    deinit { timer.cancel() }
}
