import Balancer
import Foundation
import MiniHTTP
import TestSupport
import Testing

/// One request on a new connection (`Host: 127.0.0.1:PORT`; `headers`: more lines, each ending in CRLF).
func request(_ port: Int, _ method: String, _ target: String, headers: String = "") throws -> RawHTTPResponse {
    let client = try RawHTTPConnection(port: port)
    defer { client.close() }
    client.send("\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n\(headers)Content-Length: 0\r\n\r\n")
    return try #require(client.readResponse())
}

/// The admin token of these tests.
let testAdminToken = "test-admin-token-0123456789"

/// An admin request on the client port, with the token.
func adminRequest(_ port: Int, _ method: String, _ target: String) throws -> RawHTTPResponse {
    try request(port, method, target, headers: "Authorization: Bearer \(testAdminToken)\r\n")
}

/// The test configuration, with the admin endpoints on the client port behind `testAdminToken`.
func adminConfiguration(_ backends: [TestBackend]) -> BalancerConfiguration {
    var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
    configuration.adminOnClientPort = true
    configuration.adminToken = testAdminToken
    return configuration
}

/// The JSON object of a response body.
func jsonObject(_ response: RawHTTPResponse) throws -> [String: Any] {
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
                #expect(body["host"] as? String == "127.0.0.1:\(balancer.port)", "the route sees the client's own headers")
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
            try withBalancer(adminConfiguration(backends)) { balancer in
                _ = try answeringBackends(balancer.port, count: 6)
                let response = try adminRequest(balancer.port, "GET", "/_balancer/status")
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
            try withBalancer(adminConfiguration(backends)) { balancer in
                let before = prometheusSamples(try adminRequest(balancer.port, "GET", "/_balancer/metrics").bodyText)
                #expect(Set(before.keys) == Set(balancerSeries), "every series, from the start")
                #expect(before["balancer_requests_total"] == 1)  // this request
                #expect(before["balancer_backend_requests_total{backend=\"b0\"}"] == 0)
                _ = try answeringBackends(balancer.port, count: 4)
                let response = try adminRequest(balancer.port, "GET", "/_balancer/metrics")
                #expect(response.status == 200)
                #expect(response.header("Content-Type")?.hasPrefix("text/plain") == true)
                // Gauges come as floating point numbers ("1.0"), counters as integers.
                let sample = try Regex(#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"\})? -?[0-9]+(\.[0-9]+)?$"#)
                let comment = try Regex(#"^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge)$"#)
                let lines = response.bodyText.split(separator: "\n")
                for line in lines {
                    #expect(line.wholeMatch(of: sample) != nil || line.wholeMatch(of: comment) != nil, "\(line)")
                }
                #expect(lines.contains("# TYPE balancer_backend_up gauge"))
                #expect(lines.contains("# TYPE balancer_backend_requests_total counter"))
                #expect(lines.contains("balancer_requests_total 6"))
                #expect(lines.contains("balancer_backend_requests_total{backend=\"b0\"} 2"))
                let after = prometheusSamples(response.bodyText)
                #expect(Set(after.keys) == Set(balancerSeries))
                #expect(after["balancer_backend_up{backend=\"b1\"}"] == 1)
                #expect(after["balancer_backend_in_flight{backend=\"b1\"}"] == 0)
            }
        }
    }

    @Test func drainStopsNewRequestsAndEnableRestoresRoundRobin() throws {
        try withBackends(3) { backends in
            try withBalancer(adminConfiguration(backends)) { balancer in
                let drained = try adminRequest(balancer.port, "POST", "/_balancer/backends/b1/drain")
                #expect(drained.status == 200)
                #expect(try jsonObject(drained)["health"] as? String == "draining")
                #expect(balancer.backends[1].health == "draining")
                let during = try answeringBackends(balancer.port, count: 30)
                #expect(!during.contains("b1"))
                #expect(during.contains("b0") && during.contains("b2"))

                let unknown = try adminRequest(balancer.port, "POST", "/_balancer/backends/nope/drain")
                #expect(unknown.status == 404)
                #expect(try jsonObject(unknown)["error"] as? String == "unknown_backend")

                #expect(try adminRequest(balancer.port, "POST", "/_balancer/backends/b1/enable").status == 200)
                let after = try answeringBackends(balancer.port, count: 30)
                for name in ["b0", "b1", "b2"] { #expect(after.filter { $0 == name }.count == 10, "\(name)") }
            }
        }
    }

    @Test func drainLetsTheRequestInFlightFinish() throws {
        try withBackends(2) { backends in
            try withBalancer(adminConfiguration(backends)) { balancer in
                let slow = try RawHTTPConnection(port: balancer.port)
                defer { slow.close() }
                slow.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")  // 300 ms on b0
                #expect(waitUntil { balancer.backends[0].active == 1 })
                #expect(try adminRequest(balancer.port, "POST", "/_balancer/backends/b0/drain").status == 200)
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

/// Attack: any client of the balancer (or any web page, through the operator's browser) drains the
/// cluster with one POST. The admin endpoints are off the client port unless asked for, with a token.
@Suite("Balancer: who may use the admin endpoints")
struct BalancerAdminAccessTests {
    @Test func byDefaultTheClientPortServesNoAdminEndpointAndDrainsNothing() throws {
        try withBackends(2) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                for (method, path) in [("POST", "/_balancer/backends/b0/drain"), ("GET", "/_balancer/status")] {
                    let response = try request(balancer.port, method, path)
                    #expect(response.status == 404, "\(method) \(path)")
                    // Even with a token: there is none to match.
                    let withToken = try adminRequest(balancer.port, method, path)
                    #expect(withToken.status == 404)
                }
                #expect(balancer.backends.map(\.health) == ["up", "up"], "nothing drained")
                #expect(backends.map(\.handled.current) == [0, 0], "never forwarded to a backend either")
                let after = try answeringBackends(balancer.port, count: 4)
                #expect(Set(after) == ["b0", "b1"])
            }
        }
    }

    @Test func onTheClientPortOnlyTheTokenOpensThem() throws {
        try withBackends(2) { backends in
            try withBalancer(adminConfiguration(backends)) { balancer in
                let none = try request(balancer.port, "POST", "/_balancer/backends/b0/drain")
                #expect(none.status == 401)
                #expect(none.header("WWW-Authenticate") == "Bearer")
                let wrong = try request(
                    balancer.port, "POST", "/_balancer/backends/b0/drain",
                    headers: "Authorization: Bearer test-admin-token-0123456788\r\n")
                #expect(wrong.status == 401)
                let prefix = try request(
                    balancer.port, "POST", "/_balancer/backends/b0/drain",
                    headers: "Authorization: Bearer test-admin-token\r\n")
                #expect(prefix.status == 401, "a prefix of the token is not the token")
                let basic = try request(
                    balancer.port, "POST", "/_balancer/backends/b0/drain",
                    headers: "Authorization: Basic \(testAdminToken)\r\n")
                #expect(basic.status == 401)
                #expect(balancer.backends[0].health == "up", "none of them drained b0")
                let right = try adminRequest(balancer.port, "POST", "/_balancer/backends/b0/drain")
                #expect(right.status == 200)
                #expect(balancer.backends[0].health == "draining")
                #expect(backends.map(\.handled.current) == [0, 0])
            }
        }
    }

    @Test func theAdminAddressRefusesOtherWebPagesAndHostNames() throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.adminListen = (host: "127.0.0.1", port: 0)
            try withBalancer(configuration) { balancer in
                let port = try #require(balancer.adminPort)
                // A form on another site posting to the admin address: its browser sends the page's Origin.
                let csrf = try request(port, "POST", "/_balancer/backends/b0/drain", headers: "Origin: http://evil.example\r\n")
                #expect(csrf.status == 403)
                #expect(csrf.bodyText.contains("cross_origin"))
                // DNS rebinding: the page's own name in Host.
                let client = try RawHTTPConnection(port: port)
                defer { client.close() }
                client.send("POST /_balancer/backends/b0/drain HTTP/1.1\r\nHost: evil.example:\(port)\r\nContent-Length: 0\r\n\r\n")
                let rebound = try #require(client.readResponse())
                #expect(rebound.status == 403)
                #expect(rebound.bodyText.contains("unknown_host"))
                #expect(balancer.backends[0].health == "up")
                // curl from the operator's shell works.
                #expect(try request(port, "POST", "/_balancer/backends/b0/drain").status == 200)
                #expect(balancer.backends[0].health == "draining")
            }
        }
    }

    @Test func aTokenGuardsTheAdminAddressToo() throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.adminListen = (host: "127.0.0.1", port: 0)
            configuration.adminToken = testAdminToken
            try withBalancer(configuration) { balancer in
                let port = try #require(balancer.adminPort)
                #expect(try request(port, "GET", "/_balancer/status").status == 401)
                #expect(try adminRequest(port, "GET", "/_balancer/status").status == 200)
                #expect(try adminRequest(balancer.port, "GET", "/_balancer/status").status == 404, "not on the client port")
            }
        }
    }

    @Test func configurationsThatWouldOpenThemAreRefused() {
        let backend = BackendConfiguration(name: "b", host: "127.0.0.1", port: 1)
        var onClientPort = testBalancerConfiguration(backends: [backend])
        onClientPort.adminOnClientPort = true
        #expect(throws: BalancerConfigurationError.self, "no token") { try onClientPort.validate() }
        onClientPort.adminToken = "short"
        #expect(throws: BalancerConfigurationError.self, "a short token") { try onClientPort.validate() }
        onClientPort.adminToken = testAdminToken
        #expect(throws: Never.self) { try onClientPort.validate() }
        onClientPort.adminListen = (host: "127.0.0.1", port: 0)
        #expect(throws: BalancerConfigurationError.self, "both places") { try onClientPort.validate() }
    }

    @Test func hostRuleAndConstantTimeComparison() {
        for host in ["127.0.0.1", "127.0.0.1:9090", "localhost:9090", "[::1]:9090", "[::1]", "10.1.2.3:80"] {
            #expect(OperatorAccess.isLocalOrNumeric(host: host), "\(host)")
        }
        for host in ["evil.example", "evil.example:9090", "127.0.0.1.nip.io:9090", "[::1]x", "localhost.evil:1", "::1", ""] {
            #expect(!OperatorAccess.isLocalOrNumeric(host: host), "\(host)")
        }
        #expect(OperatorAccess.constantTimeEquals(Array("abc".utf8), Array("abc".utf8)))
        #expect(!OperatorAccess.constantTimeEquals(Array("abc".utf8), Array("abd".utf8)))
        #expect(!OperatorAccess.constantTimeEquals(Array("abc".utf8), Array("abcd".utf8)))
        #expect(!OperatorAccess.constantTimeEquals([], Array("a".utf8)))
        #expect(!OperatorAccess.constantTimeEquals(Array(repeating: 0, count: 256), []), "lengths 256 apart")
    }
}
