import SessionRedis
import ServiceLifecycle
import SystemSupport
import Testing
import TestSupport

/// The Redis client in a swift-service-lifecycle `ServiceGroup`: its graceful shutdown closes
/// the client's connections (the presence connection included), as the server sees them.
@Suite(.enabled(if: TestRedis.available, "needs REDIS_URL (scripts/test.sh starts a redis-server)"), .tags(.integration))
struct RedisClientServiceTests {
    @Test func theGroupsGracefulShutdownClosesTheConnections() async throws {
        let client = try TestRedis.client(poolSize: 2)
        let observer = try TestRedis.client(poolSize: 1)
        defer { observer.close() }
        let id = try client.presenceID()
        func listed() -> Bool {
            ((try? observer.send("CLIENT", "LIST"))?.string ?? "").contains("id=\(id) ")
        }
        #expect(listed(), "the presence connection is open")
        let group = ServiceGroup(services: [client], gracefulShutdownSignals: [], logger: quietLogger())
        let running = Task { try await group.run() }
        try await Task.sleep(for: .milliseconds(50))
        #expect(listed(), "still open while the group runs")
        await group.triggerGracefulShutdown()
        try await running.value
        let deadline = monotonicMillis() + 5_000
        while listed() && monotonicMillis() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!listed(), "closed by the graceful shutdown")
    }
}
