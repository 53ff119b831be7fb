import Foundation
import Hummingbird
import HummingbirdTesting
import SessionClusterAsync
import SessionClusterNodeKit
import SessionClusterTestKit
import SessionCore
import TestSupport
import Testing

@testable import HummingbirdNode

/// The lame duck of `hummingbird-node` (`--drain-delay-ms`): on SIGTERM it keeps
/// listening and serving for the delay, `/healthz` answers 503 draining, every
/// response carries `Connection: close` (and the server closes the connection
/// after it); then it stops and exits 0.
@Suite struct LameDuckTests {
    /// The real executable (linked by `swift build`, as Integrations/test.sh does
    /// before the tests), as a balancer sees it.
    @Test func sigtermMakesTheNodeALameDuckThenItExits() async throws {
        let run = try await exerciseLameDuck(executable: "hummingbird-node", nodeID: "hb-lame")
        #expect(run.keptDuring.values("Connection") == ["close"])
        #expect(run.keptClosedAfterSeconds != nil, "the server closes the connection after its close answer")
    }

    /// The pieces in-process, on a live server: `/healthz`, the middleware and the channel handler.
    @Test func aDrainingNodeClosesEveryConnectionAfterItsAnswer() async throws {
        try await withExecutor(threads: 4) { executor in
            let lameDuck = LameDuck(delayMillis: 0)
            let node = DemoNodeApp(
                nodeID: "hb", store: MemorySessionStore(), executor: executor, sessions: SessionConfiguration(),
                lameDuck: lameDuck, logger: quietLogger())
            let app = Application(
                router: node.router,
                server: .http1(configuration: .init(additionalChannelHandlers: [CloseAfterConnectionCloseHandler()])),
                configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let port = try #require(client.port)
                // Blocking socket I/O on a thread of its own; the checks on this task (Swift Testing
                // attributes an issue to the test through the task).
                let seen = try await onThread {
                    let kept = try RawHTTPConnection(port: port)
                    let healthy = try kept.request("GET", "/healthz")
                    let keptAlive = !kept.waitForClose(timeoutMillis: 200)
                    lameDuck.beginDraining()
                    let health = try kept.request("GET", "/healthz")
                    let healthClosed = kept.waitForClose(timeoutMillis: 5000)
                    let other = try RawHTTPConnection(port: port)
                    let missing = try other.request("GET", "/no-such-route")
                    let missingClosed = other.waitForClose(timeoutMillis: 5000)
                    return (healthy, keptAlive, health, healthClosed, missing, missingClosed)
                }
                let (healthy, keptAlive, health, healthClosed, missing, missingClosed) = seen
                #expect(healthy.status == 200)
                #expect(healthy.values("Connection").isEmpty)
                #expect(keptAlive, "kept alive while not draining")
                #expect(health.status == 503)
                #expect(health.bodyText == "{\"status\":\"draining\",\"node\":\"hb\"}")
                #expect(health.values("Connection") == ["close"])
                #expect(healthClosed, "closed by the server after the close answer")
                #expect(missing.status == 404)
                #expect(missing.values("Connection") == ["close"], "error answers too")
                #expect(missingClosed)
            }
            try await node.shutdown()
        }
    }
}
