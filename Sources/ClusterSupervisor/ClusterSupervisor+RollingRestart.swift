#if canImport(Glibc)
import Glibc
#endif
import Balancer
import Logging
import MiniHTTP
import Synchronization
import SystemSupport

/// Rolling restarts: every node restarted in turn, each once the one before is back.
extension ClusterSupervisor {
    /// Restarts every node in turn, in the order of `nodeNames`, in the background: each one
    /// as `restart` does (SIGTERM, wait for the exit, start again), then waits until it answers
    /// /healthz and the balancer has it `up` before the next. Stops, and says why through
    /// `onEvent` and `rollingRestartStatus`, when a node is not back within
    /// `rollingRestartTimeoutMillis`, cannot be restarted, or the supervisor stops.
    /// Returns the order at once; refused (conflict) while one runs or while stopping.
    public func rollingRestart() throws(SupervisorError) -> [String] {
        guard !stopping.load(ordering: .relaxed) else { throw SupervisorError(kind: .conflict, "the demo is stopping") }
        let order = nodeNames
        let busy = rolling.withLock { status -> String? in
            guard !status.inProgress else { return status.node ?? "starting" }
            status = RollingRestartStatus(inProgress: true, order: order)
            return nil
        }
        if let busy { throw SupervisorError(kind: .conflict, "a rolling restart is already running (now at \(busy))") }
        onEvent("rolling restart of \(order.joined(separator: ", ")), one after another")
        startThread { [self] in runRollingRestart(order) }
        return order
    }

    /// The rolling restart in progress, or how the last one ended.
    public var rollingRestartStatus: RollingRestartStatus { rolling.withLock { $0 } }

    private func runRollingRestart(_ order: [String]) {
        let timeout = configuration.rollingRestartTimeoutMillis
        var failure: String?
        for (index, name) in order.enumerated() {
            let step = "rolling restart \(index + 1)/\(order.count)"
            rolling.withLock {
                $0.node = name
                $0.step = index + 1
            }
            guard !stopping.load(ordering: .relaxed) else {
                failure = "the demo is stopping"
                break
            }
            let node: NodeSlot
            let previous: SpawnedProcess?
            do throws(SupervisorError) {
                node = try slot(name)
                // A node that someone else is (re)starting now: its start is awaited, then it is restarted too.
                let busyUntil = monotonicMillis() + Int64(timeout)
                while [.starting, .restarting].contains(node.state) && monotonicMillis() < busyUntil
                    && !stopping.load(ordering: .relaxed)
                {
                    usleep(20_000)
                }
                previous = try beginRestart(node)
            } catch {
                failure = "cannot restart \(name): \(error)"
                break
            }
            onEvent("\(step): restarting \(name)")
            guard finishRestart(node, previous) else {
                failure = stopping.load(ordering: .relaxed) ? "the demo is stopping" : "\(name) could not be started again"
                break
            }
            let deadline = monotonicMillis() + Int64(timeout)
            var back = false
            while !stopping.load(ordering: .relaxed) && monotonicMillis() < deadline {
                let state = node.state
                if state == .running && balancerHealth(of: name) == "up" {
                    back = true
                    break
                }
                if state == .dead { break }
                usleep(20_000)
            }
            guard back else {
                failure =
                    stopping.load(ordering: .relaxed) ? "the demo is stopping"
                    : node.state == .dead ? "\(name) ended while starting; see \(logPath(name))"
                    : "\(name) was not running and up at the balancer within \(timeout / 1000) s "
                        + "(state \(node.state.rawValue), balancer: \(balancerHealth(of: name)))"
                break
            }
            onEvent("\(step): \(name) is up again")
        }
        rolling.withLock {
            $0.inProgress = false
            $0.result = failure.map { "stopped: \($0)" } ?? "done"
        }
        if !stopping.load(ordering: .relaxed) {
            onEvent(failure.map { "rolling restart stopped: \($0)" } ?? "rolling restart done: \(order.joined(separator: ", ")) restarted")
        }
    }

    /// The balancer's view of a node (`up`, `down`, `ejected`, `draining`); `up` without a balancer.
    private func balancerHealth(of name: String) -> String {
        guard let balancer else { return "up" }
        return balancer.backends.first { $0.name == name }?.health ?? "unknown"
    }
}

/// A rolling restart in progress (`inProgress`, at `node`, the `step`-th of `order`), or how the
/// last one ended (`result`: `done`, or `stopped: why`); all empty before the first.
public struct RollingRestartStatus: Sendable, Equatable {
    public var inProgress = false
    public var order: [String] = []
    /// The node being restarted (or the last one tried).
    public var node: String?
    /// 1-based position of `node` in `order`.
    public var step: Int?
    public var result: String?

    public init(inProgress: Bool = false, order: [String] = [], node: String? = nil, step: Int? = nil, result: String? = nil) {
        self.inProgress = inProgress
        self.order = order
        self.node = node
        self.step = step
        self.result = result
    }
}
