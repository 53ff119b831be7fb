#if canImport(Glibc)
import Glibc
#endif
import CoreMetrics
import Dispatch
import Logging
import MiniHTTP
import Synchronization
import SystemSupport

/// A round-robin reverse proxy for HTTP/1.1 on epoll event loops.
///
/// Each loop thread owns its client connections and its own pools of
/// keep-alive backend connections, so a request never crosses threads; the
/// loops share only the listening socket (EPOLLEXCLUSIVE; the loop that accepts
/// hands the connection to the loop with the fewest, `ConnectionSpreader`), the
/// round-robin cursor and each backend's availability and counters (atomics).
/// Bodies are streamed both ways through bounded buffers: when one side's
/// output backs up, reading the other side pauses.
public final class Balancer: Sendable {
    public let configuration: BalancerConfiguration
    let logger: Logger
    let registry: BackendRegistry
    let counters = BalancerCounters()
    /// Its series (`/_balancer/metrics`), through swift-metrics.
    let metrics: BalancerMetrics
    let stopping = Atomic<Bool>(false)
    let openClients = Atomic<Int>(0)
    /// Which loop serves each accepted client connection (the one with the fewest).
    let spreader: ConnectionSpreader
    let retryBudget: RetryBudget
    let rateLimiter: RateLimiter?
    private let healthChecker: HealthChecker?
    let localRoutes: [LocalRoute]

    /// Requests whose path starts with `prefix` are answered by `respond` on the
    /// event loop (it must not block) instead of going to a backend; e.g. a
    /// supervisor's control API next to the application it fronts. `respond` gets
    /// the request head as the client sent it (its `Host`, `Origin` and so on).
    public struct LocalRoute: Sendable {
        public var prefix: String
        public var respond: @Sendable (_ head: HTTPRequestHead) -> HTTPResponse

        public init(prefix: String, respond: @escaping @Sendable (_ head: HTTPRequestHead) -> HTTPResponse) {
            self.prefix = prefix
            self.respond = respond
        }
    }

    private struct State {
        var started = false
        var listenFD: Int32 = -1
        var port = 0
        var loops: [ProxyLoop] = []
        var adminServer: HTTPServer?
    }

    private let state = Mutex(State())
    private let stopped = DispatchSemaphore(value: 0)
    private let liveLoops = Atomic<Int>(0)

    /// `metricsFactory` receives the balancer's series through swift-metrics (e.g. `MetricsSystem.factory`
    /// after bootstrapping a backend of one's own; they are passed on every few seconds, and
    /// `/_balancer/metrics` answers 404); nil keeps them in a Prometheus registry of the balancer's
    /// own, which `/_balancer/metrics` renders.
    public init(
        configuration: BalancerConfiguration, logger: Logger, localRoutes: [LocalRoute] = [],
        metricsFactory: (any MetricsFactory)? = nil
    ) throws(BalancerConfigurationError) {
        try configuration.validate()
        for route in localRoutes where !route.prefix.hasPrefix("/") || route.prefix.hasPrefix(Self.adminPrefix) {
            throw BalancerConfigurationError("local route '\(route.prefix)' must start with '/' and not be under \(Self.adminPrefix)")
        }
        self.localRoutes = localRoutes
        self.configuration = configuration
        spreader = ConnectionSpreader(loops: max(1, configuration.eventLoops))
        self.logger = logger
        metrics = BalancerMetrics(factory: metricsFactory, backends: configuration.backends.map(\.name))
        let registry = BackendRegistry(configuration: configuration)
        self.registry = registry
        retryBudget = RetryBudget(
            ratio: configuration.retryRatio, minimum: configuration.minRetries,
            windowMillis: configuration.retryWindowMillis)
        rateLimiter = configuration.rateLimit.map { RateLimiter(configuration: $0) }
        healthChecker = configuration.healthCheck.map {
            HealthChecker(configuration: $0, registry: registry, logger: logger)
        }
    }

    /// The port of the separate admin listener (after `start()`), if configured.
    public var adminPort: Int? { state.withLock { $0.adminServer?.port } }

    /// The bound port (after `start()`).
    public var port: Int { state.withLock { $0.port } }

    public var statistics: BalancerStatistics { counters.snapshot }

    /// Requests waiting for a backend slot (all backends at `maxRequestsPerBackend`).
    public var queuedRequests: Int { registry.queued.load(ordering: .relaxed) }

    /// A snapshot of every backend, in configuration order.
    public var backends: [BackendStatus] {
        let now = monotonicMillis()
        return registry.states.enumerated().map { index, s in
            BackendStatus(
                name: s.configuration.name, host: s.configuration.host, port: s.configuration.port,
                weight: s.configuration.weight, health: s.health(now: now), ejected: s.ejectedUntil.load(ordering: .relaxed) > now,
                draining: s.draining.load(ordering: .relaxed),
                consecutiveFailures: s.consecutiveFailures.load(ordering: .relaxed),
                requests: s.requests.load(ordering: .relaxed), responses: s.responses.load(ordering: .relaxed),
                failures: s.failures.load(ordering: .relaxed), ejections: s.ejections.load(ordering: .relaxed),
                retries: s.retries.load(ordering: .relaxed),
                connectionsOpened: s.connectionsOpened.load(ordering: .relaxed), active: s.active.load(ordering: .relaxed),
                reducedShareReason: registry.reducedShareReason(index, now: now))
        }
    }

    /// Stops (true) or resumes (false) sending new requests to the backend named `name`.
    /// Requests in flight finish. False when there is no such backend.
    @discardableResult
    public func setDraining(_ name: String, _ draining: Bool) -> Bool {
        guard let state = registry.states.first(where: { $0.configuration.name == name }) else { return false }
        state.draining.store(draining, ordering: .relaxed)
        if !draining { state.ejectedUntil.store(0, ordering: .relaxed) }
        return true
    }

    /// Binds, listens and starts the loops. Returns once the port accepts connections.
    public func start() throws {
        let adminServer = try startAdminServer()
        let fd: Int32
        do {
            fd = try Sockets.listen(host: configuration.host, port: configuration.port, backlog: 4096)
        } catch {
            adminServer?.shutdown()
            throw error
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let port = Sockets.localPort(fd)
        var loops: [ProxyLoop] = []
        do {
            for index in 0..<configuration.eventLoops {
                loops.append(try ProxyLoop(balancer: self, index: index, listenFD: fd))
            }
        } catch {
            for loop in loops { loop.closeDescriptors() }
            close(fd)
            adminServer?.shutdown()
            throw error
        }
        state.withLock {
            precondition(!$0.started, "Balancer.start() called twice")
            $0.started = true
            $0.listenFD = fd
            $0.port = port
            $0.loops = loops
            $0.adminServer = adminServer
        }
        liveLoops.store(loops.count, ordering: .sequentiallyConsistent)
        for loop in loops {
            startThread { [self] in
                loop.run()
                if liveLoops.subtract(1, ordering: .sequentiallyConsistent).newValue == 0 { finishStop() }
            }
        }
        healthChecker?.start { [self] in stopping.load(ordering: .relaxed) }
        metrics.startRefreshing { [weak self] in self?.updateMetrics() }
        logger.info(
            "balancer listening",
            metadata: [
                "address": "\(configuration.host):\(port)",
                "backends": "\(configuration.backends.map { "\($0.name)=\($0.host):\($0.port)" }.joined(separator: ","))",
            ])
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace
    /// period), closes idle connections, and returns when all loops ended.
    public func shutdown() {
        let (started, loops, adminServer) = state.withLock { ($0.started, $0.loops, $0.adminServer) }
        guard started else { return }
        if !stopping.exchange(true, ordering: .sequentiallyConsistent) {
            logger.info("balancer shutting down")
            for loop in loops { loop.wake() }
            healthChecker?.stop()
            metrics.stopRefreshing()
            adminServer?.shutdown()
        }
        stopped.wait()
        stopped.signal()
    }

    /// Wakes loop `index` (a connection was handed to it).
    func wakeLoop(_ index: Int) {
        state.withLock { $0.loops[index] }.wake()
    }

    /// Wakes every loop (a backend slot was freed while requests wait for one).
    func wakeLoops() {
        for loop in state.withLock({ $0.loops }) { loop.wake() }
    }

    private func finishStop() {
        let fd = state.withLock { $0.listenFD }
        close(fd)
        logger.info("balancer stopped")
        stopped.signal()
    }
}
