import Foundation
import SessionClusterAsync
import SessionClusterNodeKit
import SessionClusterTestKit
import SessionCore
import TestSupport
import Testing
import Vapor

@testable import VaporNode

/// The lame duck of `vapor-node` (`--drain-delay-ms`): on SIGTERM it keeps
/// listening and serving for the delay, `/healthz` answers 503 draining, every
/// response carries `Connection: close`; then it stops and exits 0.
@Suite struct LameDuckTests {
    /// The real executable (linked by `swift build`, as Integrations/test.sh does
    /// before the tests), as a balancer sees it.
    @Test func sigtermMakesTheNodeALameDuckThenItExits() async throws {
        let run = try await exerciseLameDuck(executable: "vapor-node", nodeID: "vapor-lame")
        #expect(run.keptDuring.lists("close", in: "Connection"))
        // Vapor appends its own field after the middleware's: the client sees `close, keep-alive`.
        #expect(run.keptDuring.values("Connection").first == "close")
    }

    /// The pieces in-process, on a live server: `/healthz` and the middleware.
    @Test func aDrainingNodeAnswersWithConnectionClose() async throws {
        try await withExecutor(threads: 4) { executor in
            let lameDuck = LameDuck(delayMillis: 0)
            try await withLiveDemoNode(nodeID: "v", store: MemorySessionStore(), executor: executor, lameDuck: lameDuck) { port in
                // Blocking socket I/O on a thread of its own; the checks on this task (Swift Testing
                // attributes an issue to the test through the task).
                let (healthy, health, missing) = try await onThread {
                    let kept = try RawHTTPConnection(port: port)
                    let healthy = try kept.request("GET", "/healthz")
                    lameDuck.beginDraining()
                    let health = try kept.request("GET", "/healthz")
                    let missing = try kept.request("GET", "/no-such-route")  // the client ignores close here
                    return (healthy, health, missing)
                }
                #expect(healthy.status == 200)
                #expect(!healthy.lists("close", in: "Connection"))
                #expect(health.status == 503)
                #expect(health.bodyText == "{\"status\":\"draining\",\"node\":\"v\"}")
                #expect(health.values("Connection") == ["close", "keep-alive"], "Vapor appends its own field")
                #expect(health.lists("close", in: "Connection"))
                #expect(missing.status == 404)
                #expect(missing.values("Connection").first == "close", "error answers too")
            }
        }
    }
}
