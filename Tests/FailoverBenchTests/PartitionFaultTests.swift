import FailoverBench
import Testing

/// `partition:` and `isolate:` faults (their malformed forms: `ParsingTests.badFaultsSayWhy`).
@Suite struct PartitionFaultTests {
    @Test func aPartitionIsACutAndAHealAtItsWindowsEnds() throws {
        let plan = try FaultPlan(parsing: ["partition:node1|node2,node3@10s-15s", "kill:node2@20s"])
        var fault = Fault(kind: .partition, node: "", atMillis: 10_000, untilMillis: 15_000)
        fault.groups = [["node1"], ["node2", "node3"]]
        #expect(plan.faults[0] == fault)
        #expect(plan.faults[0].description == "partition:node1|node2,node3@10s-15s")
        #expect(
            plan.steps == [
                FaultStep(atMillis: 10_000, action: .partition, node: "node1|node2,node3"),
                FaultStep(atMillis: 15_000, action: .heal, node: "node1|node2,node3"),
                FaultStep(atMillis: 20_000, action: .kill, node: "node2"),
            ])
        #expect(Fault.partitionGroups("node1|node2,node3") == [["node1"], ["node2", "node3"]])
        // The supervisor's names, as for every other fault.
        let mapped = plan.mappingNodes { $0.replacingOccurrences(of: "node", with: "node-") }
        #expect(mapped.faults[0].groups == [["node-1"], ["node-2", "node-3"]])
        #expect(mapped.steps[0].node == "node-1|node-2,node-3")
    }

    @Test func isolateCutsOneNodeFromTheRest() throws {
        let plan = try FaultPlan(parsing: ["isolate:node2@1.5s-4s"])
        #expect(plan.faults[0] == Fault(kind: .isolate, node: "node2", atMillis: 1_500, untilMillis: 4_000))
        #expect(plan.faults[0].description == "isolate:node2@1.5s-4s")
        #expect(plan.steps.map(\.action) == [.partition, .heal])
        #expect(plan.steps.map(\.node) == ["node2", "node2"])
        #expect(Fault.partitionGroups("node2") == [["node2"]], "one group: it and every other node")
    }

    @Test func aWindowMayEndWithTheRunAndIsEndedWhenTheLoadStops() throws {
        #expect(throws: Never.self) { try FaultPlan(parsing: ["isolate:node1@1s-4s"]).validate(durationMillis: 4_000) }
        #expect(throws: Never.self) { try FaultPlan(parsing: ["stop:node1@1s-4s"]).validate(durationMillis: 4_000) }
        #expect(throws: FaultPlanError.self) { try FaultPlan(parsing: ["isolate:node1@1s-5s"]).validate(durationMillis: 4_000) }
        #expect(throws: FaultPlanError.self) { try FaultPlan(parsing: ["kill:node1@4s"]).validate(durationMillis: 4_000) }
        #expect(throws: FaultPlanError.self) { try FaultPlan(parsing: ["isolate:node1@4s-4s"]).validate(durationMillis: 4_000) }

        // The runner heals it (and resumes a stopped node) as the load stops, before the convergence check.
        let server = try CounterServer()
        defer { server.shutdown() }
        let injector = RecordingInjector(server: server)
        let plan = try FaultPlan(parsing: ["isolate:node-a@200ms-800ms", "stop:node-b@300ms-800ms"])
        let runner = try BenchRunner(
            configuration: BenchConfiguration(
                target: try BenchTarget(baseURL: server.url), users: 2, durationSeconds: 0.8, faults: plan),
            injector: injector, logger: .init(label: "test"))
        _ = runner.run(name: "ends-with-the-run")
        let labels = injector.applied.map(\.label)
        // At 800 ms, on time or as the load stops: both end either way, each once.
        #expect(labels.count == 4 && Array(labels.prefix(2)) == ["partition node-a", "stop node-b"], "\(labels)")
        #expect(Set(labels.suffix(2)) == ["resume node-b", "heal node-a"], "\(labels)")
    }

    @Test func twoPartitionsMayNotOverlap() {
        #expect(throws: FaultPlanError.self) {
            try FaultPlan(parsing: ["isolate:node1@10s-15s", "partition:node2|node3@12s-20s"])
        }
        #expect(throws: Never.self) { try FaultPlan(parsing: ["isolate:node1@10s-15s", "isolate:node2@15s-20s"]) }
    }
}
