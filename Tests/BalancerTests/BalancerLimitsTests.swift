import Balancer
import Dispatch
import MiniHTTP
import TestSupport
import Testing

@Suite("Balancer: retry budget, per-backend cap, rate limit")
struct BalancerLimitsTests {
    @Test func retriesStopAtTheBudget() throws {
        // Every backend reads the request, then dies without answering: each GET would be retried on every backend.
        let dying = try (0..<3).map { _ in
            try ScriptedBackend { conn in
                _ = conn.readRequest()
                conn.reset()
            }
        }
        defer { for d in dying { d.stop() } }
        var configuration = testBalancerConfiguration(backends: dying.enumerated().map { $1.configuration("d\($0)") })
        configuration.ejectBaseMillis = 1  // no ejection to hide the retries
        configuration.ejectMaxMillis = 1
        configuration.retryWindowMillis = 600_000  // all 20 requests in one window, however slow the machine
        try withBalancer(configuration) { balancer in
            let requests = 20
            for _ in 0..<requests {
                let response = try #require(try get(balancer.port, "/name"))
                #expect(response.status == 502 || response.status == 503)
            }
            let statistics = balancer.statistics
            // max(3, 20% of 20 requests) = 4 retries at most; without the budget about 2 per request.
            #expect(statistics.retries <= 4)
            #expect(statistics.retries >= 3)
            #expect(statistics.retryBudgetRefusals >= 5)
        }
    }

    @Test func backendCapQueuesThenRejectsAtOnce() throws {
        try withHeldBackend({ $0.maxQueuedRequests = 1 }) { balancer, backend, first, gate in
            let second = try RawHTTPConnection(port: balancer.port)
            defer { second.close() }
            second.send("GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(waitUntil { balancer.queuedRequests == 1 })

            let rejected = try #require(try get(balancer.port, "/c"))
            #expect(rejected.status == 503)
            #expect(rejected.header("Retry-After") == "1")
            #expect(rejected.bodyText.contains("backends_busy"))
            #expect(balancer.statistics.queueRejections == 1)

            gate.signal()
            #expect(first.readResponse()?.status == 200)
            gate.signal()
            #expect(second.readResponse()?.status == 200)
            #expect(backend.requests.current == 2)
            #expect(balancer.queuedRequests == 0)
        }
    }

    @Test func queuedRequestGets503AfterTheQueueTimeout() throws {
        try withHeldBackend({ $0.queueTimeoutMillis = 200 }) { balancer, _, first, gate in
            let waited = try #require(try get(balancer.port, "/b"))
            #expect(waited.status == 503)
            #expect(waited.bodyText.contains("backends_busy"))
            #expect(balancer.queuedRequests == 0)
            gate.signal()
            #expect(first.readResponse()?.status == 200)
        }
    }

    @Test func rateLimitAnswers429WithRetryAfter() throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.rateLimit = RateLimitConfiguration(ratePerSecond: 0.1, burst: 3)
            try withBalancer(configuration) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                var statuses: [Int] = []
                for _ in 0..<5 {
                    client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                    let response = try #require(client.readResponse())
                    statuses.append(response.status)
                    if response.status == 429 { #expect(response.header("Retry-After") == "10") }
                }
                #expect(statuses == [200, 200, 200, 429, 429])
                #expect(balancer.statistics.rateLimited == 2)
                #expect(backends[0].handled.current == 3)
            }
        }
    }
}

/// One backend that answers each request only when `gate` is signaled, capped
/// at one request in flight, which a first client holds: runs `body` with the
/// balancer, the backend, that client and the gate.
func withHeldBackend(
    _ configure: (inout BalancerConfiguration) -> Void,
    _ body: (Balancer, ScriptedBackend, RawHTTPConnection, DispatchSemaphore) throws -> Void
) throws {
    let gate = DispatchSemaphore(value: 0)
    let backend = try ScriptedBackend { conn in
        while conn.readRequest() != nil {
            gate.wait()
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        }
    }
    defer {
        for _ in 0..<8 { gate.signal() }  // no handler stays blocked whatever the test did
        backend.stop()
    }
    var configuration = testBalancerConfiguration(backends: [backend.configuration("only")])
    configuration.maxRequestsPerBackend = 1
    configure(&configuration)
    try withBalancer(configuration) { balancer in
        let first = try RawHTTPConnection(port: balancer.port)
        defer { first.close() }
        first.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(waitUntil { balancer.backends[0].active == 1 })
        try body(balancer, backend, first, gate)
    }
}
