import Foundation
import MiniHTTP
import TestSupport
import Testing
import SystemSupport

/// `session-cluster proxy` as a process: the policy options reach the balancer.
@Suite("Balancer process: proxy command options", .tags(.integration))
struct ProxyCommandTests {
    @Test func healthChecksAndSeparateAdminAddressFromTheCommandLine() throws {
        let backend = try TestBackend(name: "b0")
        defer { backend.stop() }
        let port = try Sockets.freeLoopbackPort()
        let adminPort = try Sockets.freeLoopbackPort()
        let proxy = try ChildProcess(
            try ChildProcess.sessionClusterBinary(),
            [
                "proxy", "--listen", "127.0.0.1:\(port)", "--backend", "b0=127.0.0.1:\(backend.server.port)",
                "--event-loops", "1", "--health-check-interval-ms", "50", "--health-check-fall", "2",
                "--admin-listen", "127.0.0.1:\(adminPort)", "--rate-limit", "1000", "--max-requests-per-backend", "8",
                "--shutdown-grace-ms", "1000", "--log-level", "warning",
            ])
        defer { proxy.stop(timeout: 5) }
        func health() -> String? {
            guard let response = try? request(adminPort, "GET", "/_balancer/status"),
                let status = try? jsonObject(response), let list = status["backends"] as? [[String: Any]]
            else { return nil }
            return list.first?["health"] as? String
        }
        try #require(waitUntil { health() == "up" }, "the proxy did not answer:\n\(proxy.output)")
        #expect(try get(port, "/name")?.status == 200)
        #expect(try get(port, "/_balancer/status")?.status == 404)
        backend.healthStatus.value = 503
        #expect(waitUntil { health() == "down" })
        #expect(try get(port, "/name")?.status == 503)
        #expect(proxy.stop(timeout: 5) == 0, "\(proxy.output)")
    }

    @Test(arguments: [
        ["--rate-limit-burst", "3"], ["--health-check-fall", "0"], ["--admin-listen", "example.com:80"],
        ["--retry-ratio", "1.5"], ["--max-queued-requests", "-1"], ["--rate-limit", "0"],
        ["--rate-limit-max-clients", "10"], ["--rate-limit", "10", "--rate-limit-max-clients", "0"],
    ])
    func invalidOptionsAreRefusedWithAMessage(_ options: [String]) throws {
        let proxy = try ChildProcess(
            try ChildProcess.sessionClusterBinary(),
            ["proxy", "--listen", "127.0.0.1:0", "--backend", "b0=127.0.0.1:1"] + options)
        defer { proxy.stop(timeout: 5) }
        #expect(waitUntil(timeout: 10) { !proxy.isRunning })
        #expect(proxy.stop(timeout: 1) != 0)
        #expect(proxy.output.contains("Error:"), "\(proxy.output)")
    }
}
