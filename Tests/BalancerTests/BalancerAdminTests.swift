import Balancer
import Foundation
import MiniHTTP
import TestSupport
import Testing

/// One request on a new connection.
func request(_ port: Int, _ method: String, _ target: String) throws -> TestResponse {
    let client = try TestClient(port: port)
    defer { client.close() }
    client.send("\(method) \(target) HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    return try #require(client.readResponse())
}

/// The JSON object of a response body.
func jsonObject(_ response: TestResponse) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
}

@Suite("Balancer: admin endpoints")
struct BalancerAdminTests {
    @Test func localRouteAnswersItsPrefixAndEverythingElseGoesToBackends() throws {
        let route = Balancer.LocalRoute(prefix: "/_cluster/") { head in
            .json("{\"method\":\"\(head.method)\",\"path\":\"\(head.path)\",\"host\":\"\(head.headers["Host"] ?? "")\"}")
        }
        try withBackends(2) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration)), localRoutes: [route]) {
                balancer in
                let local = try request(balancer.port, "POST", "/_cluster/nodes/n1/kill")
                #expect(local.status == 200)
                let body = try jsonObject(local)
                #expect(body["method"] as? String == "POST")
                #expect(body["path"] as? String == "/_cluster/nodes/n1/kill")
                #expect(body["host"] as? String == "t", "the route sees the client's own headers")
                let forwarded = try request(balancer.port, "GET", "/name")
                #expect(forwarded.status == 200)
                #expect(backends.map(\.handled.current).reduce(0, +) == 1, "only the non-matching request reached a backend")
            }
        }
        let bad = Balancer.LocalRoute(prefix: "/_balancer/x") { _ in .text("no") }
        #expect(throws: BalancerConfigurationError.self) {
            _ = try Balancer(
                configuration: testBalancerConfiguration(backends: [BackendConfiguration(name: "b", host: "127.0.0.1", port: 1)]),
                logger: quietLogger(), localRoutes: [bad])
        }
    }

    @Test func statusReflectsTraffic() throws {
        try withBackends(2) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                _ = try answeringBackends(balancer.port, count: 6)
                let response = try request(balancer.port, "GET", "/_balancer/status")
                #expect(response.status == 200)
                #expect(response.header("Content-Type") == "application/json")
                let status = try jsonObject(response)
                let list = try #require(status["backends"] as? [[String: Any]])
                #expect(list.map { $0["name"] as? String } == ["b0", "b1"])
                for (entry, backend) in zip(list, backends) {
                    #expect(entry["address"] as? String == "127.0.0.1:\(backend.server.port)")
                    #expect(entry["weight"] as? Int == 1)
                    #expect(entry["health"] as? String == "up")
                    #expect(entry["requests"] as? Int == 3)
                    #expect(entry["failures"] as? Int == 0)
                    #expect(entry["inFlight"] as? Int == 0)
                    #expect(entry["retries"] as? Int == 0)
                    #expect(entry["ejections"] as? Int == 0)
                }
                let totals = try #require(status["totals"] as? [String: Int])
                #expect(totals["requests"] == 7)  // the status request counts too
                #expect(totals["retries"] == 0)
            }
        }
    }

    @Test func metricsAreValidPrometheusText() throws {
        try withBackends(2) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                _ = try answeringBackends(balancer.port, count: 4)
                let response = try request(balancer.port, "GET", "/_balancer/metrics")
                #expect(response.status == 200)
                #expect(response.header("Content-Type")?.hasPrefix("text/plain") == true)
                let sample = try Regex(#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"\})? -?[0-9]+$"#)
                let comment = try Regex(#"^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge)$"#)
                let lines = response.bodyText.split(separator: "\n")
                for line in lines {
                    #expect(line.wholeMatch(of: sample) != nil || line.wholeMatch(of: comment) != nil, "\(line)")
                }
                #expect(lines.contains("balancer_requests_total 5"))
                #expect(lines.contains("balancer_backend_requests_total{backend=\"b0\"} 2"))
                #expect(lines.contains("balancer_backend_up{backend=\"b1\"} 1"))
            }
        }
    }

    @Test func drainStopsNewRequestsAndEnableRestoresRoundRobin() throws {
        try withBackends(3) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let drained = try request(balancer.port, "POST", "/_balancer/backends/b1/drain")
                #expect(drained.status == 200)
                #expect(try jsonObject(drained)["health"] as? String == "draining")
                #expect(balancer.backends[1].health == "draining")
                let during = try answeringBackends(balancer.port, count: 30)
                #expect(!during.contains("b1"))
                #expect(during.contains("b0") && during.contains("b2"))

                let unknown = try request(balancer.port, "POST", "/_balancer/backends/nope/drain")
                #expect(unknown.status == 404)
                #expect(try jsonObject(unknown)["error"] as? String == "unknown_backend")

                #expect(try request(balancer.port, "POST", "/_balancer/backends/b1/enable").status == 200)
                let after = try answeringBackends(balancer.port, count: 30)
                for name in ["b0", "b1", "b2"] { #expect(after.filter { $0 == name }.count == 10, "\(name)") }
            }
        }
    }

    @Test func drainLetsTheRequestInFlightFinish() throws {
        try withBackends(2) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let slow = try TestClient(port: balancer.port)
                defer { slow.close() }
                slow.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")  // 300 ms on b0
                #expect(waitUntil { balancer.backends[0].active == 1 })
                #expect(try request(balancer.port, "POST", "/_balancer/backends/b0/drain").status == 200)
                #expect(slow.readResponse()?.status == 200)
                let after = try answeringBackends(balancer.port, count: 4)
                #expect(after == Array(repeating: "b1", count: 4))
            }
        }
    }

    @Test func separateAdminAddressAndUnknownAdminPaths() throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.adminListen = (host: "127.0.0.1", port: 0)
            try withBalancer(configuration) { balancer in
                let adminPort = try #require(balancer.adminPort)
                #expect(try request(adminPort, "GET", "/_balancer/status").status == 200)
                #expect(try request(adminPort, "GET", "/_balancer/nothing").status == 404)
                let onClientPort = try request(balancer.port, "GET", "/_balancer/status")
                #expect(onClientPort.status == 404)
                #expect(backends[0].handled.current == 0, "never forwarded")
            }
        }
    }
}
