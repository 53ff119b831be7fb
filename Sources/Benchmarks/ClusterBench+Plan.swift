import FailoverBench
import Foundation
import Logging

extension ClusterBench {
    /// The strategies of a comma-separated list, in order; throws on an empty
    /// list or an unknown name.
    public static func strategyNames(_ list: String) throws(BenchFailure) -> [String] {
        let names = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !names.isEmpty else { throw BenchFailure("--strategies is empty") }
        for name in names where clusterStrategy(name) == nil {
            throw BenchFailure(
                "unknown strategy '\(name)'; available: replicate-async, replicate-sync, redis, redis-cluster, local")
        }
        return names
    }

    /// The faults of a run: `specs`; none with `noFaults`; by default node-2
    /// killed at a third of the run and restarted at two thirds. Against a
    /// running cluster (`againstTarget`) a rolling restart must name its nodes.
    public func faultPlan(_ specs: [String], noFaults: Bool, againstTarget: Bool) throws(BenchFailure) -> FaultPlan {
        if noFaults {
            guard specs.isEmpty else { throw BenchFailure("--no-faults and --fault exclude each other") }
            return FaultPlan()
        }
        let specs = specs.isEmpty
            ? ["kill:node-2@\(durationMillis / 3)ms", "restart:node-2@\(2 * durationMillis / 3)ms"] : specs
        let plan: FaultPlan
        do {
            plan = try FaultPlan(parsing: specs)
            // A rolling restart of the whole cluster restarts `nodes` nodes (named by the supervisor at its start).
            try plan.validate(durationMillis: durationMillis, clusterSize: againstTarget ? nil : nodes)
        } catch {
            throw BenchFailure("\(error)")
        }
        if againstTarget, let rolling = plan.unresolvedRolling.first {
            throw BenchFailure(
                "fault '\(rolling)': with --target, name the nodes to restart, in order: rolling:NODE,NODE,...@T:GAP")
        }
        return plan
    }

    /// Measures a running cluster at `baseURL` (`--target`): `write` and
    /// `read` are requests such as "POST /api/counter"; faults are carried
    /// out by `faultCommand` (a shell command), else only marked on the timeline.
    public func measureTarget(
        baseURL: String, write: String, read: String, countField: String, nodeField: String, faultCommand: String?,
        plan: FaultPlan, logger: Logger
    ) throws -> StrategyResult {
        let injector = faultCommand.map { ShellFaultInjector(command: $0) }
        if injector == nil && !plan.isEmpty {
            print("note: --target without --fault-command: the faults are marked on the timeline but not carried out")
        }
        let target: BenchTarget
        do {
            target = try BenchTarget(
                baseURL: baseURL, write: try BenchTarget.Endpoint(write), read: try BenchTarget.Endpoint(read),
                countField: countField, nodeField: nodeField)
        } catch {
            throw BenchFailure("--target: \(error)")
        }
        return try measure(name: "target", target: target, plan: plan, injector: injector, logger: logger)
    }
}
