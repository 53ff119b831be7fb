import MiniHTTP
import Synchronization
import SystemSupport

/// What every event loop shares about one backend: availability and counters.
final class BackendState: Sendable {
    let configuration: BackendConfiguration
    let address: SocketAddress
    /// Monotonic ms until which the backend is left out after failures (0: in).
    let ejectedUntil = Atomic<Int64>(0)
    let consecutiveFailures = Atomic<Int>(0)
    let draining = Atomic<Bool>(false)
    /// Attempts sent to this backend (a retried request counts on each backend it tried).
    let requests = Atomic<Int>(0)
    /// Responses received from this backend (heads).
    let responses = Atomic<Int>(0)
    /// Connect failures and connections that broke before a response.
    let failures = Atomic<Int>(0)
    let ejections = Atomic<Int>(0)
    /// Connections opened to this backend, over all loops.
    let connectionsOpened = Atomic<Int>(0)
    /// Requests in flight on this backend (a slot is taken by `BackendRegistry.pick`).
    let active = Atomic<Int>(0)
    /// Attempts sent here that were retries of a request that failed elsewhere.
    let retries = Atomic<Int>(0)
    /// What the active health checks say (true while they are off).
    let healthy = Atomic<Bool>(true)
    /// Monotonic ms when the health checks last brought the backend back (0: never; for slow start).
    let upSince = Atomic<Int64>(0)
    /// Times the health checks took the backend out.
    let healthDowns = Atomic<Int>(0)

    init(configuration: BackendConfiguration, address: SocketAddress) {
        self.configuration = configuration
        self.address = address
    }

    func isAvailable(now: Int64) -> Bool {
        !draining.load(ordering: .relaxed) && healthy.load(ordering: .relaxed)
            && ejectedUntil.load(ordering: .relaxed) <= now
    }

    /// Takes a request slot unless `cap` (> 0) are in use.
    func tryAcquire(cap: Int) -> Bool {
        guard cap > 0 else {
            active.add(1, ordering: .relaxed)
            return true
        }
        var current = active.load(ordering: .relaxed)
        while current < cap {
            let (exchanged, original) = active.compareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// up, down (health checks), ejected (passive), or draining.
    func health(now: Int64) -> String {
        if draining.load(ordering: .relaxed) { return "draining" }
        if !healthy.load(ordering: .relaxed) { return "down" }
        return ejectedUntil.load(ordering: .relaxed) > now ? "ejected" : "up"
    }
}

extension BackendRegistry {
    /// Why backend `index` gets fewer requests than its weight's share now, in words; nil when it does not.
    func reducedShareReason(_ index: Int, now: Int64) -> String? {
        let state = states[index]
        if state.draining.load(ordering: .relaxed) { return "draining: taken out through the admin API" }
        if !state.healthy.load(ordering: .relaxed) { return "down: its health checks fail" }
        let until = state.ejectedUntil.load(ordering: .relaxed)
        if until > now {
            let failures = state.consecutiveFailures.load(ordering: .relaxed)
            return "ejected for \(until - now) ms more after \(failures) connection failure\(failures == 1 ? "" : "s") in a row"
        }
        if let percent = slowStartPercent(index, now: now) { return "slow start: \(percent)% of its share" }
        if cap > 0 && state.active.load(ordering: .relaxed) >= cap { return "at its cap of \(cap) requests in flight" }
        return nil
    }

    /// The share of its turns a backend in slow start takes now (0...99), nil when not in slow start.
    func slowStartPercent(_ index: Int, now: Int64) -> Int? {
        let up = states[index].upSince.load(ordering: .relaxed)
        guard slowStartMillis > 0, up != 0, now - up < slowStartMillis else { return nil }
        return Int((now - up) * 100 / slowStartMillis)
    }
}

/// What `BackendRegistry.pick` found.
enum Pick: Equatable {
    /// This backend, with a request slot taken for the caller.
    case backend(Int)
    /// Backends are available but all at their cap of requests in flight.
    case busy
    /// No backend is available.
    case none
}

/// The backends, their shared state and the (weighted) round robin.
///
/// The schedule is a smooth weighted round robin (nginx's), expanded once into
/// a list of `sum(weights)` entries; one atomic cursor walks it for all loops,
/// so the distribution is exact over any run of requests, whichever loop
/// serves them. Unavailable backends are skipped.
final class BackendRegistry: Sendable {
    let states: [BackendState]
    let schedule: [Int]
    private let cursor = Atomic<Int>(0)
    let ejectBaseMillis: Int64
    let ejectMaxMillis: Int64
    let cap: Int
    let slowStartMillis: Int64
    /// Exchanges waiting in the loops' queues for a backend slot.
    let queued = Atomic<Int>(0)

    init(configuration: BalancerConfiguration) {
        states = configuration.backends.map { backend in
            // validate() has checked the address.
            BackendState(configuration: backend, address: SocketAddress(host: backend.host, port: backend.port)!)
        }
        schedule = Self.smoothSchedule(weights: configuration.backends.map(\.weight))
        ejectBaseMillis = Int64(configuration.ejectBaseMillis)
        ejectMaxMillis = Int64(configuration.ejectMaxMillis)
        cap = configuration.maxRequestsPerBackend
        slowStartMillis = Int64(configuration.healthCheck?.slowStartMillis ?? 0)
    }

    /// nginx's smooth weighted round robin, one full cycle.
    static func smoothSchedule(weights: [Int]) -> [Int] {
        let total = weights.reduce(0, +)
        var current = [Int](repeating: 0, count: weights.count)
        var out: [Int] = []
        out.reserveCapacity(total)
        for _ in 0..<total {
            var best = 0
            for i in weights.indices {
                current[i] += weights[i]
                if current[i] > current[best] { best = i }
            }
            current[best] -= total
            out.append(best)
        }
        return out
    }

    /// The next available backend not in `excluding` (a bit per backend index)
    /// with a free request slot, which is taken.
    func pick(excluding: UInt64, now: Int64) -> Pick {
        let n = schedule.count
        let turn = UInt(bitPattern: cursor.wrappingAdd(1, ordering: .relaxed).oldValue)
        let start = Int(turn % UInt(n))
        var busy = false
        var rampingUp: Int? = nil
        // When the scheduled backend is out, the turn goes to one of the others, a different one
        // each round, so the survivors share the missing backend's turns evenly.
        let round = Int((turn / UInt(n)) % UInt(max(n - 1, 1)))
        for k in 0..<n {
            let offset = k == 0 ? 0 : 1 + (k - 1 + round) % (n - 1)
            let index = schedule[(start + offset) % n]
            guard excluding & (1 << UInt64(index)) == 0, states[index].isAvailable(now: now) else { continue }
            if isSkippedBySlowStart(index, now: now, turn: turn) {
                rampingUp = rampingUp ?? index
            } else if states[index].tryAcquire(cap: cap) {
                return .backend(index)
            } else {
                busy = true
            }
        }
        if let index = rampingUp {
            if states[index].tryAcquire(cap: cap) { return .backend(index) }
            busy = true
        }
        return busy ? .busy : .none
    }

    /// During slow start a backend takes its turn with a probability that grows from 0 to 1.
    private func isSkippedBySlowStart(_ index: Int, now: Int64, turn: UInt) -> Bool {
        guard slowStartMillis > 0 else { return false }
        let up = states[index].upSince.load(ordering: .relaxed)
        let elapsed = now - up
        guard up != 0, elapsed < slowStartMillis else { return false }
        let dice = Int64((turn &* 2_654_435_761) % 1_000)  // spread the cursor over 0..<1000
        return dice >= elapsed * 1_000 / slowStartMillis
    }

    /// Gives back a slot taken by `pick`.
    func release(_ index: Int) {
        states[index].active.subtract(1, ordering: .relaxed)
    }

    /// A connection to the backend could not be made (or broke at once): leave it out for a while.
    ///
    /// The time out doubles with each failure in a row, but only with failures of attempts made
    /// after the last ejection ended: the other loops' connects that were already under way when
    /// the backend was ejected fail too, and must not push a restarting node out for half a minute.
    func connectFailed(_ index: Int, now: Int64) {
        let state = states[index]
        state.failures.add(1, ordering: .relaxed)
        guard state.ejectedUntil.load(ordering: .relaxed) <= now else { return }
        let n = state.consecutiveFailures.add(1, ordering: .relaxed).newValue
        let backoff = min(ejectMaxMillis, ejectBaseMillis << Int64(min(n - 1, 20)))
        state.ejectedUntil.store(now + backoff, ordering: .relaxed)
        state.ejections.add(1, ordering: .relaxed)
    }

    /// The health checks see a passively ejected backend answer again: it is back at once
    /// (with a slow start, if configured), instead of waiting out a backoff that may have
    /// grown while it restarted.
    func endEjection(_ index: Int, now: Int64) {
        let state = states[index]
        guard state.ejectedUntil.load(ordering: .relaxed) > now else { return }
        state.ejectedUntil.store(0, ordering: .relaxed)
        state.consecutiveFailures.store(0, ordering: .relaxed)
        state.upSince.store(now, ordering: .relaxed)
    }

    /// A connection to the backend was made: it is healthy again.
    func connectSucceeded(_ index: Int) {
        let state = states[index]
        if state.consecutiveFailures.load(ordering: .relaxed) != 0 {
            state.consecutiveFailures.store(0, ordering: .relaxed)
        }
    }
}

/// A snapshot of one backend, for status pages and tests.
public struct BackendStatus: Sendable, Equatable {
    public var name: String
    public var host: String
    public var port: Int
    public var weight: Int
    /// up, down (active health checks), ejected (connection failures) or draining.
    public var health: String
    public var ejected: Bool
    public var draining: Bool
    public var consecutiveFailures: Int
    public var requests: Int
    public var responses: Int
    public var failures: Int
    public var ejections: Int
    public var retries: Int
    public var connectionsOpened: Int
    public var active: Int
    /// Why it gets fewer requests than its share now (draining, down, ejected until…, slow start,
    /// at its cap); nil when it gets its share.
    public var reducedShareReason: String? = nil
}

/// Balancer-wide counters since start.
public struct BalancerStatistics: Sendable, Equatable {
    public var connectionsAccepted = 0
    public var connectionsRejected = 0
    public var requests = 0
    public var badRequests = 0
    public var retries = 0
    /// Retries of requests (of any method) that a backend closed its connection on without reading them.
    public var unreadRetries = 0
    /// Retries refused because the retry budget was spent (the client got the error).
    public var retryBudgetRefusals = 0
    /// 503 answers because the backends were at their cap and the queue was full or waited too long.
    public var queueRejections = 0
    /// 429 answers of the per-client rate limit.
    public var rateLimited = 0
    /// 502 answers: a backend failed after the request was sent.
    public var badGateway = 0
    /// 503 answers: no backend could take the request.
    public var noBackend = 0
    /// 504 answers: a backend did not answer in time.
    public var gatewayTimeouts = 0
    /// Responses cut off after they had started (the client connection was closed).
    public var aborted = 0
    public var clientTimeouts = 0
}

final class BalancerCounters: Sendable {
    let connectionsAccepted = Atomic<Int>(0)
    let connectionsRejected = Atomic<Int>(0)
    let requests = Atomic<Int>(0)
    let badRequests = Atomic<Int>(0)
    let retries = Atomic<Int>(0)
    let unreadRetries = Atomic<Int>(0)
    let retryBudgetRefusals = Atomic<Int>(0)
    let queueRejections = Atomic<Int>(0)
    let rateLimited = Atomic<Int>(0)
    let badGateway = Atomic<Int>(0)
    let noBackend = Atomic<Int>(0)
    let gatewayTimeouts = Atomic<Int>(0)
    let aborted = Atomic<Int>(0)
    let clientTimeouts = Atomic<Int>(0)

    var snapshot: BalancerStatistics {
        BalancerStatistics(
            connectionsAccepted: connectionsAccepted.load(ordering: .relaxed),
            connectionsRejected: connectionsRejected.load(ordering: .relaxed),
            requests: requests.load(ordering: .relaxed),
            badRequests: badRequests.load(ordering: .relaxed),
            retries: retries.load(ordering: .relaxed),
            unreadRetries: unreadRetries.load(ordering: .relaxed),
            retryBudgetRefusals: retryBudgetRefusals.load(ordering: .relaxed),
            queueRejections: queueRejections.load(ordering: .relaxed),
            rateLimited: rateLimited.load(ordering: .relaxed),
            badGateway: badGateway.load(ordering: .relaxed),
            noBackend: noBackend.load(ordering: .relaxed),
            gatewayTimeouts: gatewayTimeouts.load(ordering: .relaxed),
            aborted: aborted.load(ordering: .relaxed),
            clientTimeouts: clientTimeouts.load(ordering: .relaxed))
    }
}
