import Logging
import SessionCore
import SessionReplication
import ServiceLifecycle
import SystemSupport
import Testing
import TestSupport

/// The node and the sweepers in a swift-service-lifecycle `ServiceGroup`, as a Hummingbird or
/// Vapor application adds them: started by the group, stopped by its graceful shutdown.
@Suite struct ServiceTests {
    @Test func aServiceGroupStartsTheNodesAndItsGracefulShutdownStopsThem() async throws {
        let cluster = try LoopbackCluster(count: 2)
        defer { cluster.shutdown() }
        let group = ServiceGroup(
            services: [cluster[0], cluster[1]], gracefulShutdownSignals: [], logger: quietLogger())
        let running = Task { try await group.run() }
        #expect(await eventually { cluster.nodes.allSatisfy(\.isReady) && cluster.isFullyConnected }, "the group started both")
        let id = SessionID.generate()
        _ = try cluster[0].store.apply(SessionDelta(id: id, changes: [.set("n", encodeCounter(1))], createIfMissing: true))
        #expect(await eventually { cluster[1].store.fullState(of: id) != nil }, "and they replicate")

        await group.triggerGracefulShutdown()
        try await running.value
        // Shut down: the peers are gone, and a new change no longer travels.
        #expect(cluster.nodes.allSatisfy { $0.peers.allSatisfy { !$0.connected } })
        let later = SessionID.generate()
        _ = try? cluster[0].store.apply(SessionDelta(id: later, changes: [.set("n", encodeCounter(1))], createIfMissing: true))
        try await Task.sleep(for: .milliseconds(200))
        #expect(cluster[1].store.fullState(of: later) == nil)
    }

    @Test func theSweeperServiceSweepsWhileTheGroupRuns() async throws {
        let clock = ManualClock()
        let store = MemorySessionStore(
            expiry: SessionExpiry(idleTimeoutMillis: 1_000, absoluteTimeoutMillis: nil), clock: clock.clock)
        let replicated = ReplicatedSessionStore(
            node: 1, expiry: SessionExpiry(idleTimeoutMillis: 1_000, absoluteTimeoutMillis: nil), clock: clock.clock)
        for target in [store as any SessionStore, replicated] {
            _ = try target.apply(SessionDelta(id: SessionID.generate(), changes: [.set("a", encodeCounter(1))], createIfMissing: true))
        }
        clock.advance(millis: 2_000)
        #expect(store.count == 1 && replicated.count == 1, "expired, not swept yet")
        let group = ServiceGroup(
            services: [SweeperService(store: store, intervalMillis: 20), SweeperService(store: replicated, intervalMillis: 20)],
            gracefulShutdownSignals: [], logger: quietLogger())
        let running = Task { try await group.run() }
        #expect(await eventually { store.count == 0 && replicated.count == 0 }, "swept while the group runs")
        await group.triggerGracefulShutdown()
        try await running.value
    }
}

/// Polls `check` up to `polls` times, 10 ms apart, sleeping the task in between (not blocking
/// a thread of the cooperative pool, which the services under test run on). Counted in polls,
/// not in wall time: when the whole pool is held up by other suites' blocking tests, this task
/// and the services' tasks wait alike, and each poll gives them a turn.
private func eventually(polls: Int = 500, _ check: () -> Bool) async -> Bool {
    for _ in 0..<polls {
        if check() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return check()
}
