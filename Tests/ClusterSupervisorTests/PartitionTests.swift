import Foundation
import Synchronization
import TestSupport
import Testing

@testable import ClusterSupervisor

/// `ClusterSupervisor.partition(_:)` on real replicating nodes whose links run through `LinkRelay`s.
@Suite("Partitions", .serialized, .timeLimit(.minutes(3)), .tags(.integration))
struct PartitionTests {
    private static func count(_ client: CurlClient, port: Int, sid: String) -> Int? {
        guard let response = try? client.request(
            "GET", "http://127.0.0.1:\(port)/api/session", headers: ["Cookie: sid=\(sid)"], useJar: false),
            response.status == 200,
            let range = response.body.range(of: #""count":[0-9]+"#, options: .regularExpression)
        else { return nil }
        return Int(response.body[range].dropFirst(8))
    }

    /// Three nodes with relayed links, started; the first increment (count 1) made on node-1 and
    /// seen on node-3. The caller shuts the supervisor down.
    private static func startCluster(
        _ strategy: ClusterConfiguration.Strategy, mode: String = "async", nodeArguments: [String] = []
    ) throws
        -> (supervisor: ClusterSupervisor, events: EventLog, ports: [Int], client: CurlClient, sid: String)
    {
        var configuration = ClusterConfiguration(
            strategy: strategy, replicationMode: mode, nodeCount: 3, port: 0,
            executable: try ChildProcess.sessionClusterBinary().path)
        configuration.relayedLinks = true
        configuration.extraNodeArguments = nodeArguments
        let events = EventLog()
        let supervisor = try ClusterSupervisor(configuration: configuration, logger: .init(label: "test")) { event in
            events.append(event)
        }
        do {
            try supervisor.start()
            let ports = supervisor.nodePorts.map(\.port)
            let client = CurlClient()
            #expect(try client.request("POST", "http://127.0.0.1:\(ports[0])/api/counter").body.contains(#""count":1"#))
            let sid = try #require(client.cookie("sid"))
            #expect(waitUntil(timeout: 10) { count(client, port: ports[2], sid: sid) == 1 }, "node-3 has it")
            return (supervisor, events, ports, client, sid)
        } catch {
            supervisor.shutdown()
            throw error
        }
    }

    /// `POST /api/counter` on the node at `port` for the session `sid`.
    private static func increment(_ client: CurlClient, port: Int, sid: String) throws -> CurlClient.Response {
        try client.request("POST", "http://127.0.0.1:\(port)/api/counter", headers: ["Cookie: sid=\(sid)"], useJar: false)
    }

    @Test func anIsolatedNodeMissesTheOthersChangesUntilHealedThenCatchesUp() throws {
        let (supervisor, events, ports, client, sid) = try Self.startCluster(.replicate)
        defer { supervisor.shutdown() }
        let (one, two, three) = (ports[0], ports[1], ports[2])

        try supervisor.partition([["node-3"]])
        #expect(supervisor.cutLinks == ["node-1>node-3", "node-2>node-3", "node-3>node-1", "node-3>node-2"])
        #expect(events.lines.contains("partition: node-3 | node-1,node-2"), "\(events.lines)")
        #expect(try Self.increment(client, port: one, sid: sid).body.contains(#""count":2"#))
        #expect(waitUntil(timeout: 10) { Self.count(client, port: two, sid: sid) == 2 }, "node-2 is on node-1's side")
        usleep(1_000_000)
        #expect(Self.count(client, port: three, sid: sid) == 1, "node-3 is cut off: it still holds the old count")

        supervisor.healPartition()
        #expect(supervisor.cutLinks.isEmpty)
        #expect(waitUntil(timeout: 15) { Self.count(client, port: three, sid: sid) == 2 }, "node-3 catches up once healed")
    }

    /// Sync mode is CP: the node on the minority side refuses (503, `/healthz` says why) instead of
    /// diverging, and what it wrote without a majority is gone once it rejoins with the others' state.
    @Test func aSyncNodeCutOffFromTheMajorityRefusesThenRejoinsWithTheMajoritysState() throws {
        let (supervisor, _, ports, client, sid) = try Self.startCluster(.replicate, mode: "sync")
        defer { supervisor.shutdown() }
        let (one, two, three) = (ports[0], ports[1], ports[2])

        try supervisor.partition([["node-3"]])
        // node-3 applies this increment but cannot get it acknowledged by a majority: refused.
        let cutOff = try Self.increment(client, port: three, sid: sid)
        #expect(cutOff.status == 503, "\(cutOff.status) \(cutOff.body)")
        let health = try client.request("GET", "http://127.0.0.1:\(three)/healthz", useJar: false)
        #expect(health.status == 503 && health.body.contains("rejoining") && health.body.contains("majority"), "\(health.body)")
        // The majority side goes on.
        #expect(try Self.increment(client, port: one, sid: sid).body.contains(#""count":2"#))
        #expect(Self.count(client, port: three, sid: sid) == nil, "node-3 serves no stale count")

        supervisor.healPartition()
        #expect(waitUntil(timeout: 20) { Self.count(client, port: three, sid: sid) == 2 }, "rejoined with the majority's count")
        #expect(Self.count(client, port: two, sid: sid) == 2, "node-3's refused increment never reached the others")
        #expect(try Self.increment(client, port: three, sid: sid).body.contains(#""count":3"#), "node-3 is a member again")
    }

    /// A slow link is no partition: a peer that keeps acknowledging, late, is lagging, not dead —
    /// it is never declared dead nor made to rejoin, however long the writes keep it behind.
    ///
    /// The link adds 150 ms each way (a 300 ms round trip, 3x the 100 ms sync timeout: node-3
    /// lags); the nodes fence after 4 s without an acknowledgement, 13x that round trip, so a
    /// loaded machine that delays the relayed acknowledgements cannot pass for a dead peer (with
    /// the default 1 s it could), and node-2's acknowledgements have as long to come.
    @Test func aSlowLinkInSyncModeIsLaggingNotDead() throws {
        let (supervisor, _, ports, client, sid) = try Self.startCluster(
            .replicate, mode: "sync", nodeArguments: ["--fence-after-ms", "4000"])
        defer { supervisor.shutdown() }
        try supervisor.slowLink("node-1", "node-3", latencyMillis: 150, lossPercent: 0)
        let until = Date().addingTimeInterval(6)  // well past fenceAfterMillis (4 s): not a timing assertion
        var count = 1
        while Date() < until {
            let answer = try Self.increment(client, port: ports[0], sid: sid)
            #expect(answer.status == 200, "\(answer.body)")
            count += 1
        }
        let metrics = try client.request("GET", "http://127.0.0.1:\(ports[0])/metrics", useJar: false).body
        #expect(metrics.contains("session_replication_peers_declared_dead_total{node=\"node-1\"} 0"), "\(metrics)")
        #expect(try client.request("GET", "http://127.0.0.1:\(ports[2])/healthz", useJar: false).status == 200)
        try supervisor.slowLink("node-1", "node-3", latencyMillis: 0, lossPercent: 0)
        #expect(waitUntil(timeout: 10) { Self.count(client, port: ports[2], sid: sid) == count }, "node-3 has every write")
    }

    /// With the redis strategy a partition cuts a node's link to its store: that node answers 503
    /// (its `/healthz` says why) and the others, on Redis's side, go on; healed, it serves again.
    @Test(.enabled(if: RedisServerProcess.isInstalled, "needs redis-server (scripts/test.sh installs it)"))
    func aRedisNodeCutOffFromItsStoreRefusesWhileTheOthersGoOn() throws {
        let (supervisor, events, ports, client, sid) = try Self.startCluster(.redis)
        defer { supervisor.shutdown() }
        #expect(supervisor.linkRelays.isEmpty, "redis nodes have no links to each other")
        let (one, three) = (ports[0], ports[2])

        try supervisor.partition([["node-3"]])
        #expect(supervisor.cutLinks == ["node-3>redis"])
        #expect(events.lines.contains("partition: node-3 | node-1,node-2,redis"), "\(events.lines)")
        let cutOff = try Self.increment(client, port: three, sid: sid)
        #expect(cutOff.status == 503, "\(cutOff.status) \(cutOff.body)")
        #expect(waitUntil(timeout: 10) {
            (try? client.request("GET", "http://127.0.0.1:\(three)/healthz", useJar: false).status) == 503
        })
        #expect(try Self.increment(client, port: one, sid: sid).body.contains(#""count":2"#), "the nodes on Redis's side go on")

        supervisor.healPartition()
        #expect(supervisor.cutLinks.isEmpty)
        #expect(waitUntil(timeout: 15) { Self.count(client, port: three, sid: sid) == 2 }, "node-3 serves again, the same count")
    }

    @Test func aPartitionNeedsRelayedLinksAndKnownNodes() throws {
        let executable = try ChildProcess.sessionClusterBinary().path
        let plain = try ClusterSupervisor(
            configuration: ClusterConfiguration(strategy: .replicate, nodeCount: 2, port: 0, executable: executable),
            logger: .init(label: "test"))
        defer { plain.shutdown() }
        #expect(throws: SupervisorError.self) { try plain.partition([["node-1"]]) }

        var configuration = ClusterConfiguration(strategy: .replicate, nodeCount: 2, port: 0, executable: executable)
        configuration.relayedLinks = true
        let relayed = try ClusterSupervisor(configuration: configuration, logger: .init(label: "test"))
        defer { relayed.shutdown() }
        #expect(relayed.linkRelays.keys.sorted() == ["node-1>node-2", "node-2>node-1"])
        #expect(throws: SupervisorError.self) { try relayed.partition([["node-9"]]) }
        #expect(relayed.cutLinks.isEmpty)
        #expect(throws: Never.self) { try relayed.slowLink("node-1", "node-2", latencyMillis: 100, lossPercent: 5) }
        #expect(throws: SupervisorError.self) { try relayed.slowLink("node-1", "node-9", latencyMillis: 100, lossPercent: 0) }
        #expect(throws: SupervisorError.self) { try plain.slowLink("node-1", "node-2", latencyMillis: 100, lossPercent: 0) }

        configuration.strategy = .local
        #expect(throws: SupervisorError.self) {
            try ClusterSupervisor(configuration: configuration, logger: .init(label: "test"))
        }
    }
}

/// The supervisor's events, from any thread.
private final class EventLog: Sendable {
    private let storage = Mutex<[String]>([])
    func append(_ line: String) { storage.withLock { $0.append(line) } }
    var lines: [String] { storage.withLock { $0 } }
}
