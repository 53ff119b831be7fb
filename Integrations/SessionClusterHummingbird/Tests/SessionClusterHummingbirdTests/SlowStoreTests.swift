import Foundation
import Hummingbird
import HummingbirdTesting
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import Synchronization
import TestSupport
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
                try await exerciseSlowStore(store, port: port)
            }
        }
    }
}
