import Foundation
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import SessionMiddleware
import Testing
import Vapor

@testable import VaporNode

/// Blocking store calls run on the executor's threads, not on Vapor's event
/// loops (2 on this machine) or Swift's cooperative pool: while two requests
/// are stuck in a store that blocks their threads, twenty requests of other
/// sessions complete on a live server.
@Suite struct SlowStoreTests {
    @Test func aSlowStoreDoesNotStallOtherSessions() async throws {
        let store = SlowSessionStore(MemorySessionStore(), delayMillis: 10_000)  // blocks until released (at most 10 s)
        try await withExecutor(threads: 8) { executor in
            let app = try await Application.make(.testing)
            app.logger.logLevel = .critical
            do {
                let routes = try DemoNodeRoutes(
                    app: app, nodeID: "slow", store: store, executor: executor, sessions: SessionConfiguration(),
                    logger: quietLogger())
                try await app.server.start(address: .hostname("127.0.0.1", port: 0))
                let port = try #require(app.http.server.shared.localAddress?.port)
                try await exerciseSlowStore(store, port: port)
                await app.server.shutdown()
                try await routes.shutdown()
            } catch {
                await app.server.shutdown()
                try? await app.asyncShutdown()
                throw error
            }
            try await app.asyncShutdown()
        }
    }
}
