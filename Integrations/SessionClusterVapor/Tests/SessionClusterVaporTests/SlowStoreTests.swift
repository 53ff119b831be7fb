import Foundation
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
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
            try await withLiveDemoNode(nodeID: "slow", store: store, executor: executor) { port in
                try await exerciseSlowStore(store, port: port)
            }
        }
    }
}
