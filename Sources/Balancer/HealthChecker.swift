#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import MiniHTTP
import SystemSupport

/// Settings of the active health checks. Times are in milliseconds.
public struct HealthCheckConfiguration: Sendable, Equatable {
    /// Requested with GET on every backend; 2xx and 3xx count as healthy.
    public var path: String
    /// Time between two checks of a backend.
    public var intervalMillis: Int
    /// For the whole check: connect, request and response head.
    public var timeoutMillis: Int
    /// Consecutive successes that bring a down backend back.
    public var rise: Int
    /// Consecutive failures that take an up backend out.
    public var fall: Int
    /// A backend coming back gets its full share of requests over this time (0: at once).
    public var slowStartMillis: Int

    public init(
        path: String = "/healthz", intervalMillis: Int = 1_000, timeoutMillis: Int = 500, rise: Int = 2, fall: Int = 3,
        slowStartMillis: Int = 0
    ) {
        self.path = path
        self.intervalMillis = intervalMillis
        self.timeoutMillis = timeoutMillis
        self.rise = rise
        self.fall = fall
        self.slowStartMillis = slowStartMillis
    }

    func validate() throws(BalancerConfigurationError) {
        guard path.hasPrefix("/"), !path.contains(" ") else {
            throw BalancerConfigurationError("health check path must start with '/' and have no spaces")
        }
        guard intervalMillis > 0, timeoutMillis > 0 else {
            throw BalancerConfigurationError("health check interval and timeout must be positive")
        }
        guard rise >= 1, fall >= 1 else { throw BalancerConfigurationError("health check rise and fall must be ≥ 1") }
        guard slowStartMillis >= 0 else { throw BalancerConfigurationError("slow start must be ≥ 0") }
    }
}

/// One thread that checks every backend in turn with blocking sockets and
/// timeouts, and marks backends up or down after `rise`/`fall` results in a row.
final class HealthChecker: Sendable {
    private let configuration: HealthCheckConfiguration
    private let registry: BackendRegistry
    private let logger: Logger
    private let wakeUp = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    init(configuration: HealthCheckConfiguration, registry: BackendRegistry, logger: Logger) {
        self.configuration = configuration
        self.registry = registry
        self.logger = logger
    }

    func start(stopping: @escaping @Sendable () -> Bool) {
        startThread { [self] in
            var streaks = [Int](repeating: 0, count: registry.states.count)  // > 0: successes, < 0: failures
            while !stopping() {
                for (index, state) in registry.states.enumerated() where !stopping() {
                    record(check(state), state, &streaks[index])
                    if streaks[index] >= configuration.rise { registry.endEjection(index, now: monotonicMillis()) }
                }
                _ = wakeUp.wait(timeout: .now() + .milliseconds(configuration.intervalMillis))
            }
            finished.signal()
        }
    }

    /// Ends the thread (after `stopping` turned true) and waits for it.
    func stop() {
        wakeUp.signal()
        finished.wait()
    }

    private func record(_ ok: Bool, _ state: BackendState, _ streak: inout Int) {
        streak = ok ? max(streak, 0) + 1 : min(streak, 0) - 1
        let healthy = state.healthy.load(ordering: .relaxed)
        if ok && !healthy && streak >= configuration.rise {
            state.upSince.store(monotonicMillis(), ordering: .relaxed)
            state.healthy.store(true, ordering: .relaxed)
            logger.info("backend up", metadata: ["backend": "\(state.configuration.name)"])
        } else if !ok && healthy && -streak >= configuration.fall {
            state.healthy.store(false, ordering: .relaxed)
            state.healthDowns.add(1, ordering: .relaxed)
            logger.warning("backend down", metadata: ["backend": "\(state.configuration.name)"])
        }
    }

    /// One `GET path`: true when a 2xx or 3xx head arrives in time.
    private func check(_ state: BackendState) -> Bool {
        guard
            let answer = BlockingGET.fetch(
                host: state.configuration.host, port: state.configuration.port, path: configuration.path,
                timeoutMillis: configuration.timeoutMillis, userAgent: "session-cluster-balancer", readBody: false)
        else { return false }
        return (200..<400).contains(answer.status)
    }
}
