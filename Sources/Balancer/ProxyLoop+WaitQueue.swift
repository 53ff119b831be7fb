#if canImport(Glibc)
import Glibc
#endif
import Logging
import MiniHTTP
import SystemSupport

// Requests waiting for a backend at its connection cap, in arrival order.
extension ProxyLoop {
    // MARK: - The wait queue (backends at their cap)

    func enqueue(_ ex: Exchange, now: Int64) {
        guard registry.queued.add(1, ordering: .relaxed).newValue <= configuration.maxQueuedRequests else {
            registry.queued.subtract(1, ordering: .relaxed)
            return rejectBusy(ex)
        }
        ex.isQueued = true
        ex.machine.enqueued(now: now)
        waiting.append(ex)
    }

    func dequeue(_ ex: Exchange) {
        guard ex.isQueued else { return }
        ex.isQueued = false
        registry.queued.subtract(1, ordering: .relaxed)
        if let i = waiting.firstIndex(where: { $0 === ex }) { waiting.remove(at: i) }
    }

    func rejectBusy(_ ex: Exchange) {
        counters.queueRejections.add(1, ordering: .relaxed)
        respondError(ex, .backendsBusy)
    }

    /// Tries the waiting exchanges again, oldest first; those that waited too long get 503.
    func serveWaiting(now: Int64) {
        let list = waiting
        waiting = []
        for ex in list where ex.isQueued {
            ex.isQueued = false
            registry.queued.subtract(1, ordering: .relaxed)
            switch ex.machine.queueTurn(now: now, limits: exchangeLimits) {
            case .respond: rejectBusy(ex)
            case .tryAgain: startAttempt(ex)
            }
            schedule(ex.client)
        }
    }

    /// A connection to `backend` failed for the exchange: the backend is left out
    /// for a while, and for good by this exchange.
    func leaveOut(_ backend: Int, of ex: Exchange, now: Int64) {
        registry.connectFailed(backend, now: now)
        ex.machine.leaveOut(backend)
    }
}
