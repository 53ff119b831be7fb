import Balancer
import MiniHTTP
import TestSupport
import Testing
import SystemSupport

/// Fast checks, so that the tests take a fraction of a second per transition.
func fastHealthChecks() -> HealthCheckConfiguration {
    HealthCheckConfiguration(intervalMillis: 50, timeoutMillis: 500, rise: 2, fall: 3)
}

/// The backend names that answered `count` sequential GETs on one connection.
func answeringBackends(_ port: Int, count: Int) throws -> [String] {
    let client = try RawHTTPConnection(port: port)
    defer { client.close() }
    var names: [String] = []
    for _ in 0..<count {
        client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
        let response = try #require(client.readResponse())
        #expect(response.status == 200)
        names.append(response.header("X-Backend") ?? "?")
    }
    return names
}

@Suite("Balancer: active health checks")
struct BalancerHealthCheckTests {
    @Test func unhealthyBackendLeavesAfterFallAndReturnsAfterRise() throws {
        try withBackends(2) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.healthCheck = fastHealthChecks()
            try withBalancer(configuration) { balancer in
                #expect(Set(try answeringBackends(balancer.port, count: 4)) == ["b0", "b1"])

                backends[1].healthStatus.value = 503
                #expect(waitUntil { balancer.backends[1].health == "down" })
                #expect(backends[1].healthChecks.value[503, default: 0] >= 3, "down only after `fall` failed checks")
                let names = try answeringBackends(balancer.port, count: 6)
                #expect(names == Array(repeating: "b0", count: 6))

                backends[1].healthStatus.value = 200
                #expect(waitUntil { balancer.backends[1].health == "up" })
                #expect(backends[1].healthChecks.value[200, default: 0] >= 2, "up only after `rise` good checks")
                #expect(Set(try answeringBackends(balancer.port, count: 4)) == ["b0", "b1"])
                #expect(balancer.statistics.noBackend == 0 && balancer.statistics.badGateway == 0)
            }
        }
    }

    @Test func backendStartedLaterEntersRotation() throws {
        try withBackends(1) { backends in
            let latePort = try Sockets.freeLoopbackPort()
            var configuration = testBalancerConfiguration(
                backends: [backends[0].configuration, BackendConfiguration(name: "late", host: "127.0.0.1", port: latePort)])
            configuration.healthCheck = fastHealthChecks()
            try withBalancer(configuration) { balancer in
                #expect(waitUntil { balancer.backends[1].health == "down" })
                let before = try answeringBackends(balancer.port, count: 4)
                #expect(before == Array(repeating: "b0", count: 4))

                let late = try TestBackend(name: "late", port: latePort)
                defer { late.stop() }
                #expect(waitUntil { balancer.backends[1].health == "up" })
                #expect(try answeringBackends(balancer.port, count: 4).contains("late"))
                #expect(balancer.statistics.noBackend == 0 && balancer.statistics.badGateway == 0)
            }
        }
    }

    @Test func slowStartStillServesEveryRequest() throws {
        try withBackends(2) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.healthCheck = fastHealthChecks()
            configuration.healthCheck?.slowStartMillis = 60_000
            try withBalancer(configuration) { balancer in
                backends[1].healthStatus.value = 503
                #expect(waitUntil { balancer.backends[1].health == "down" })
                backends[1].healthStatus.value = 200
                #expect(waitUntil { balancer.backends[1].health == "up" })
                // At the start of a minute-long ramp the returning backend gets few requests, none is lost.
                let names = try answeringBackends(balancer.port, count: 40)
                #expect(names.filter { $0 == "b1" }.count < 20)
            }
        }
    }
}
