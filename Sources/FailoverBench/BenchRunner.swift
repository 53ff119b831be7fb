#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import MiniHTTP
import Synchronization
import SystemSupport

/// Runs the failover benchmark against one target: the simulated users, the
/// checker, the fault schedule and the progress callback.
///
/// ```swift
/// let runner = try BenchRunner(configuration: config, injector: supervisor, logger: logger) { progress in
///     printToStderr(progress.line)
/// }
/// let result = runner.run(name: "redis")
/// ```
///
/// `run` blocks until the duration has passed (or `maxRequests` requests
/// were answered, or `cancel()` was called). Its threads: `threads` load
/// loops, one that applies the faults on time (through the injector; an
/// action that blocks delays the later ones), and one for progress. All of
/// them have ended when `run` returns; a node still SIGSTOPped at the end is
/// resumed.
public final class BenchRunner: Sendable {
    public let configuration: BenchConfiguration
    private let injector: (any FaultInjector)?
    private let logger: Logger
    private let progress: (@Sendable (BenchProgress) -> Void)?
    private let current = Mutex<RunContext?>(nil)

    /// Validates the configuration. Without an injector, faults are marked
    /// on the timeline with the error "no fault injector".
    public init(
        configuration: BenchConfiguration, injector: (any FaultInjector)? = nil, logger: Logger,
        progress: (@Sendable (BenchProgress) -> Void)? = nil
    ) throws(BenchConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        self.injector = injector
        self.logger = logger
        self.progress = progress
    }

    /// Stops the run in progress soon (e.g. on SIGINT); its results so far are returned.
    public func cancel() {
        current.withLock { $0?.cancelled.store(true, ordering: .relaxed) }
    }

    /// Runs once and returns the results under `name` (a strategy's name).
    public func run(name: String) -> StrategyResult {
        let start = Int64(monotonicNanos())
        let context = RunContext(configuration: configuration, startNanos: start)
        current.withLock { $0 = context }
        defer { current.withLock { $0 = nil } }
        let finished = Latch()
        logger.info(
            "bench run starting",
            metadata: ["strategy": "\(name)", "target": "\(configuration.target.baseURL)", "users": "\(configuration.users)"])

        let helpers = DispatchGroup()
        spawn(helpers) { [self] in applyFaults(context: context, finished: finished) }
        if let progress {
            spawn(helpers) { [self] in report(progress, name: name, context: context, finished: finished) }
        }
        let loops = DispatchGroup()
        let threads = min(configuration.threads, configuration.users)
        let sessions = Mutex<[ConvergenceCheck.UserSession]>([])
        for t in 0..<threads {
            let share = Array(stride(from: t, to: configuration.users, by: threads))
            spawn(loops) {
                let ended = LoadLoop(context: context, userIndices: share).run()
                sessions.withLock { $0 += ended }
            }
        }
        loops.wait()
        let end = Int64(monotonicNanos())
        finished.open()
        helpers.wait()
        let convergence = configuration.convergenceNodes.isEmpty
            ? nil
            : ConvergenceCheck(nodes: configuration.convergenceNodes, target: configuration.target)
                .run(sessions.withLock { $0 }, loadEndedNanos: end)

        let outcome = context.recorder.finish(durationNanos: end - start)
        logger.info(
            "bench run finished",
            metadata: ["strategy": "\(name)", "requests": "\(outcome.summary.counts.requests)",
                "errors": "\(outcome.summary.counts.errors)", "anomalies": "\(outcome.summary.counts.anomalies)"])
        let share = SettledShare.compute(
            buckets: outcome.buckets, markers: outcome.markers, nodes: outcome.summary.nodes.keys.sorted(),
            bucketMillis: configuration.bucketMillis, runMillis: Int((end - start) / 1_000_000),
            slowStartMillis: configuration.slowStartMillis)
        return StrategyResult(
            name: name, target: configuration.target.baseURL, settings: configuration.settings, summary: outcome.summary,
            buckets: outcome.buckets, faults: outcome.markers, settledShare: share, convergence: convergence,
            latencyHistogram: outcome.latency)
    }

    /// Applies each step of the plan on time, then resumes nodes left stopped and heals a
    /// partition left in place (a window ending with the run), before the convergence check.
    private func applyFaults(context: RunContext, finished: Latch) {
        var stopped: [String] = []
        var partitioned: (node: String, until: Int)?
        var slowed: Set<String> = []
        func apply(_ action: FaultAction, node: String, plannedMillis: Int) {
            var marker = FaultMarker(
                action: action, node: node, plannedMillis: plannedMillis,
                atMillis: context.recorder.offsetMillis(Int64(monotonicNanos())))
            do {
                guard let injector else { throw BenchConfigurationError("no fault injector") }
                try injector.apply(action, node: node)
            } catch {
                marker.error = "\(error)"
                logger.warning("fault failed", metadata: ["fault": "\(marker.label)", "error": "\(error)"])
            }
            if action == .stop { stopped.append(node) }
            if action == .resume { stopped.removeAll { $0 == node } }
            if action == .partition { partitioned = (node, plannedMillis) }
            if action == .heal { partitioned = nil }
            if action == .slow { slowed.insert(node) }
            if action == .unslow { slowed.remove(node) }
            context.recorder.addMarker(marker)
            context.lastFault.withLock { $0 = marker.label }
        }
        for step in configuration.faults.steps {
            if finished.wait(untilNanos: context.startNanos + Int64(step.atMillis) * 1_000_000) { break }
            apply(step.action, node: step.node, plannedMillis: step.atMillis)
        }
        finished.wait(untilNanos: .max)
        let plannedEnds = Dictionary(
            configuration.faults.faults.compactMap { f in f.untilMillis.map { (f.node, $0) } }, uniquingKeysWith: max)
        for node in stopped { apply(.resume, node: node, plannedMillis: plannedEnds[node] ?? 0) }
        for node in slowed.sorted() {
            let end = configuration.faults.steps.first { $0.action == .unslow && $0.node == node }?.atMillis ?? 0
            apply(.unslow, node: node, plannedMillis: end)
        }
        if let (node, _) = partitioned {
            let end = configuration.faults.steps.first { $0.action == .heal && $0.node == node }?.atMillis ?? 0
            apply(.heal, node: node, plannedMillis: end)
        }
    }

    /// Calls `progress` every interval until the run ends.
    private func report(
        _ progress: @Sendable (BenchProgress) -> Void, name: String, context: RunContext, finished: Latch
    ) {
        let interval = Int64(configuration.progressIntervalMillis) * 1_000_000
        var previous = (at: context.startNanos, answered: 0)
        var next = context.startNanos + interval
        while !finished.wait(untilNanos: next) {
            let now = Int64(monotonicNanos())
            let counts = context.recorder.counts
            let rate = Double(counts.answered - previous.answered) * 1e9 / Double(max(1, now - previous.at))
            previous = (now, counts.answered)
            progress(BenchProgress(
                strategy: name, elapsedSeconds: Double(now - context.startNanos) / 1e9,
                durationSeconds: configuration.durationSeconds, counts: counts, answeredPerSecond: rate,
                lastFault: context.lastFault.withLock { $0 }))
            next += interval
        }
    }

    private func spawn(_ group: DispatchGroup, _ body: @escaping @Sendable () -> Void) {
        group.enter()
        startThread {
            body()
            group.leave()
        }
    }
}

/// Opened once, at the end of a run; helper threads wait on it with a deadline.
final class Latch: Sendable {
    private let isOpen = Atomic<Bool>(false)

    func open() { isOpen.store(true, ordering: .releasing) }

    /// Waits until `deadline` (monotonic nanoseconds) or until opened; true when opened.
    @discardableResult
    func wait(untilNanos deadline: Int64) -> Bool {
        while !isOpen.load(ordering: .acquiring) {
            let left = deadline - Int64(monotonicNanos())
            if left <= 0 { return false }
            usleep(UInt32(min(left / 1000, 2_000)))
        }
        return true
    }
}
