import Foundation
import Hummingbird
import HummingbirdTesting
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import SessionMiddleware
import Synchronization
import Testing

@testable import HummingbirdNode

/// Blocking store calls run on the executor's threads, not on the event
/// loops (2 on this machine) or Swift's cooperative pool (2 threads): while
/// two requests are stuck in a store that blocks their threads, twenty
/// requests of other sessions complete on a live server. Were the store
/// called on a loop or the cooperative pool, the two stuck calls would
/// hold both threads and the other requests would wait for them.
@Suite struct SlowStoreTests {
    @Test func aSlowStoreDoesNotStallOtherSessions() async throws {
        let store = SlowSessionStore(MemorySessionStore(), delayMillis: 10_000)  // blocks until released (at most 10 s)
        try await withExecutor(threads: 8) { executor in
            let node = DemoNodeApp(
                nodeID: "slow", store: store, executor: executor, sessions: SessionConfiguration(),
                logger: quietLogger())
            let app = Application(
                router: node.router, configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let port = try #require(client.port)
                // Two sessions, then their store calls turn slow.
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
                    // Both slow requests are inside the store, each holding a thread.
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
    }
}
