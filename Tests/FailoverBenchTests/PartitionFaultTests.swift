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
        // The windows open early in a 2 s run: a loaded machine still applies them before it ends.
        let plan = try FaultPlan(
            parsing: ["isolate:node-a@100ms-2s", "stop:node-b@150ms-2s", "slow-link:node-a,node-b@200ms-2s:10ms"])
        let runner = try BenchRunner(
            configuration: BenchConfiguration(
                target: try BenchTarget(baseURL: server.url), users: 2, durationSeconds: 2, faults: plan),
            injector: injector, logger: .init(label: "test"))
        _ = runner.run(name: "ends-with-the-run")
        let labels = injector.applied.map(\.label)
        // At 2 s, on time or as the load stops: each ends either way, once.
        #expect(
            labels.count == 6 && Array(labels.prefix(3)) == ["partition node-a", "stop node-b", "slow node-a,node-b:10ms/0%"],
            "\(labels)")
        #expect(Set(labels.suffix(3)) == ["resume node-b", "heal node-a", "unslow node-a,node-b:10ms/0%"], "\(labels)")
    }

    @Test func aSlowLinkIsASlowAndAnUnslowAtItsWindowsEnds() throws {
        let plan = try FaultPlan(parsing: ["slow-link:node1-node2@10s-15s:200ms", "slow-link:node-1,redis@1s-2s:50ms/5%"])
        var fault = Fault(kind: .slowLink, node: "", atMillis: 10_000, untilMillis: 15_000)
        fault.groups = [["node1", "node2"]]
        fault.latencyMillis = 200
        fault.lossPercent = 0
        #expect(plan.faults[0] == fault)
        #expect(plan.faults[0].description == "slow-link:node1-node2@10s-15s:200ms")
        #expect(plan.faults[1].description == "slow-link:node-1,redis@1s-2s:50ms/5%", "',' when a name holds '-'")
        #expect(try Fault.parse(plan.faults[1].description) == plan.faults[1])
        #expect(
            plan.steps == [
                FaultStep(atMillis: 1_000, action: .slow, node: "node-1,redis:50ms/5%"),
                FaultStep(atMillis: 2_000, action: .unslow, node: "node-1,redis:50ms/5%"),
                FaultStep(atMillis: 10_000, action: .slow, node: "node1,node2:200ms/0%"),
                FaultStep(atMillis: 15_000, action: .unslow, node: "node1,node2:200ms/0%"),
            ])
        let link = try #require(Fault.slowLink("node-1,redis:50ms/5%"))
        #expect(link.a == "node-1" && link.b == "redis" && link.latencyMillis == 50 && link.lossPercent == 5)
        #expect(Fault.slowLink("node-1:50ms/5%") == nil && Fault.slowLink("a,b:50/5%") == nil)
        // The supervisor's names, as for every other fault.
        let mapped = plan.mappingNodes { $0.replacingOccurrences(of: "node", with: "node-") }
        #expect(mapped.steps[2].node == "node-1,node-2:200ms/0%")
    }

    @Test func twoPartitionsMayNotOverlap() {
        #expect(throws: FaultPlanError.self) {
            try FaultPlan(parsing: ["isolate:node1@10s-15s", "partition:node2|node3@12s-20s"])
        }
        #expect(throws: Never.self) { try FaultPlan(parsing: ["isolate:node1@10s-15s", "isolate:node2@15s-20s"]) }
    }
}
