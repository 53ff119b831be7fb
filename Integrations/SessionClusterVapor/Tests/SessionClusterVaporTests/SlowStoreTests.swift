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
                try await exercise(store: store, port: port)
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

    func exercise(store: SlowSessionStore, port: Int) async throws {
        var slowCookies: [String] = []
        for _ in 0..<2 {
            let created = try await onThread { try rawHTTP(port: port, "POST", "/api/counter") }
            let cookie = try #require(created.setCookies.first?.split(separator: ";").first.map(String.init))
            store.makeSlow(try #require(SessionID(rawValue: String(cookie.dropFirst("sid=".count)))))
            slowCookies.append(cookie)
        }
        let finished = CompletionLog()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, cookie) in slowCookies.enumerated() {
                group.addTask {
                    let response = try await onThread {
                        try rawHTTP(port: port, "GET", "/api/session", headers: ["Cookie": cookie])
                    }
                    #expect(response.status == 200)
                    #expect(response.body.contains(#""count":1"#))
                    finished.append("slow-\(i)")
                }
            }
            let stuck = await eventually { store.blockedCalls == 2 }
            #expect(stuck, "the slow requests reached the store")
            try await withThrowingTaskGroup(of: Void.self) { fast in
                for i in 0..<20 {
                    fast.addTask {
                        let response = try await onThread { try rawHTTP(port: port, "POST", "/api/counter") }
                        #expect(response.status == 200)
                        #expect(response.body.contains(#""count":1"#))
                        finished.append("fast-\(i)")
                    }
                }
                try await fast.waitForAll()
            }
            #expect(store.blockedCalls == 2, "the other sessions completed while the store was stuck")
            store.release()
            try await group.waitForAll()
        }
        let order = finished.entries
        #expect(order.count == 22)
        #expect(order.prefix(20).allSatisfy { $0.hasPrefix("fast-") }, "completion order: \(order)")
        #expect(store.delayedCalls == 2)
    }
}
