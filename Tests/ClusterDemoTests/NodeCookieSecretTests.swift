import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `session-cluster node` reads its cookie signing key from `SESSION_COOKIE_SECRET` (README: "16
/// bytes or more turns on signed cookies"). Three node processes share one private redis-server,
/// so any of them can load any session: whether a node serves the session a cookie names depends
/// only on whether it accepts the cookie's signature.
@Suite(
    .serialized, .enabled(if: RedisServerProcess.isInstalled, "needs redis-server (scripts/test.sh installs it)"),
    .tags(.integration))
struct NodeCookieSecretTests {
    /// A node process with the redis strategy and `SESSION_COOKIE_SECRET` = `secret`; it exits when
    /// the test runner does (`--parent-pid`). The caller stops it.
    private static func node(_ id: String, secret: String, redis: RedisServerProcess) throws -> (ChildProcess, Int) {
        let binary = try ChildProcess.sessionClusterBinary()
        return try ChildProcess.startServer(timeout: 30) { port in
            try ChildProcess(
                binary,
                [
                    "node", "--port", "\(port)", "--node-id", id, "--strategy", "redis", "--redis", redis.url,
                    "--parent-pid", "\(getpid())",
                ],
                environment: ["SESSION_COOKIE_SECRET": secret])
        } isUp: { port in
            (try? rawHTTP(port: port, "GET", "/healthz", timeoutMillis: 2_000))?.status == 200
        }
    }

    /// The count of the session the cookie `sid` names, as the node at `port` sees it.
    private static func count(port: Int, sid: String) throws -> String {
        let response = try CurlClient().request(
            "GET", "http://127.0.0.1:\(port)/api/session", headers: ["Cookie: sid=\(sid)"], useJar: false)
        #expect(response.status == 200, "\(response.body)")
        guard let range = response.body.range(of: #""count":[0-9]+"#, options: .regularExpression) else {
            return response.body
        }
        return String(response.body[range])
    }

    @Test func nodesWithTheSameSecretAcceptEachOthersCookiesANodeWithAnotherRefusesThem() throws {
        let redis = try RedisServerProcess()
        defer { redis.kill() }
        let shared = "a-shared-secret-of-32-characters"
        let (a, portA) = try Self.node("a", secret: shared, redis: redis)
        defer { a.stop(signal: SIGKILL, timeout: 5) }
        let (b, portB) = try Self.node("b", secret: shared, redis: redis)
        defer { b.stop(signal: SIGKILL, timeout: 5) }
        let (c, portC) = try Self.node("c", secret: "another-secret-of-32-characters!", redis: redis)
        defer { c.stop(signal: SIGKILL, timeout: 5) }

        let client = CurlClient()
        for _ in 0..<2 { #expect(try client.request("POST", "http://127.0.0.1:\(portA)/api/counter").status == 200) }
        let sid = try #require(client.cookie("sid"), "node a set no session cookie")

        #expect(try Self.count(port: portA, sid: sid) == #""count":2"#)
        #expect(try Self.count(port: portB, sid: sid) == #""count":2"#, "b, with a's secret, accepts a's cookie")
        #expect(try Self.count(port: portC, sid: sid) == #""count":0"#, "c, with another secret, refuses a's cookie")
        // And the other way: a refuses what c signs.
        let other = CurlClient()
        #expect(try other.request("POST", "http://127.0.0.1:\(portC)/api/counter").status == 200)
        let fromC = try #require(other.cookie("sid"), "node c set no session cookie")
        #expect(try Self.count(port: portC, sid: fromC) == #""count":1"#)
        #expect(try Self.count(port: portA, sid: fromC) == #""count":0"#, "a refuses c's cookie")
    }
}
