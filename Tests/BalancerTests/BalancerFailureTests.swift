#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

@Suite("Balancer: failures, retries and timeouts")
struct BalancerFailureTests {
    @Test func stoppedBackendIsSkippedWithoutClientErrors() throws {
        try withBackends(3) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                for _ in 0..<9 {
                    client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                    #expect(client.readResponse()?.status == 200)
                }
                backends[1].stop()
                var names: [String] = []
                for _ in 0..<60 {
                    client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                    let response = try #require(client.readResponse())
                    #expect(response.status == 200)
                    names.append(response.header("X-Backend") ?? "?")
                    // Idempotency-Key POSTs and new connections too.
                    let other = try RawHTTPConnection(port: balancer.port)
                    other.send("POST /name HTTP/1.1\r\nHost: t\r\nIdempotency-Key: k\r\nContent-Length: 0\r\n\r\n")
                    #expect(other.readResponse()?.status == 200)
                    other.close()
                }
                #expect(!names.contains("b1"))
                #expect(balancer.statistics.badGateway == 0 && balancer.statistics.noBackend == 0)
                let status = balancer.backends[1]
                #expect(status.ejected && status.ejections >= 1)
            }
        }
    }

    @Test func backendKilledMidRunGivesNoClientVisibleErrors() throws {
        try withBackends(3) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let port = balancer.port
                let failures = Counter()
                let ok = Counter()
                let stopper = SendOnce { backends[2].stop() }
                let finished = onThreads(4, seconds: 60) { i in
                    guard let client = try? RawHTTPConnection(port: port) else {
                        failures.increment()
                        return
                    }
                    defer { client.close() }
                    for n in 0..<100 {
                        if i == 0 && n == 30 { stopper.run() }
                        let request = n % 2 == 0
                            ? "GET /name HTTP/1.1\r\nHost: t\r\n\r\n"
                            : "POST /name HTTP/1.1\r\nHost: t\r\nIdempotency-Key: key-\(i)-\(n)\r\nContent-Length: 0\r\n\r\n"
                        client.send(request)
                        if client.readResponse()?.status == 200 { ok.increment() } else { failures.increment() }
                    }
                }
                #expect(finished)
                #expect(failures.current == 0)
                #expect(ok.current == 400)
            }
        }
    }

    @Test func postWithoutIdempotencyKeyIsNeverReplayed() throws {
        // b0 reads the request, then dies without answering.
        let dying = try ScriptedBackend { conn in
            _ = conn.readRequest()
            conn.reset()
        }
        defer { dying.stop() }
        try withBackends(2) { backends in
            var configs = [dying.configuration("dying")]
            configs += backends.map(\.configuration)
            try withBalancer(testBalancerConfiguration(backends: configs)) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                client.send("POST /name HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
                let response = try #require(client.readResponse())
                #expect(response.status == 502)
                #expect(response.header("Content-Type") == "application/json")
                #expect(response.bodyText.contains("\"bad_gateway\""))
                #expect(dying.requests.current == 1, "sent once")
                #expect(backends.map { $0.handled.current } == [0, 0], "never replayed elsewhere")
                #expect(balancer.statistics.retries == 0)

                // The connection is still usable after a 502.
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(client.readResponse()?.status == 200)
            }
        }
    }

    @Test func idempotentRequestsAreRetriedAfterTheBackendDied() throws {
        let dying = try ScriptedBackend { conn in
            _ = conn.readRequest()
            conn.close()
        }
        defer { dying.stop() }
        try withBackends(1) { backends in
            var configs = [dying.configuration("dying")]
            configs += backends.map(\.configuration)
            // Make sure the dying backend is first for each request: eject off by a tiny backoff.
            var configuration = testBalancerConfiguration(backends: configs)
            configuration.ejectBaseMillis = 1
            configuration.ejectMaxMillis = 1
            try withBalancer(configuration) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                let requests = [
                    "POST /echo HTTP/1.1\r\nHost: t\r\nIdempotency-Key: abc\r\nContent-Length: 5\r\n\r\nhello",
                    "PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                    "GET /name HTTP/1.1\r\nHost: t\r\n\r\n",
                ]
                for request in requests {
                    usleep(5_000)
                    client.send(request)
                    let response = try #require(client.readResponse())
                    #expect(response.status == 200)
                    #expect(response.header("X-Backend") == "b0")
                }
                #expect(dying.requests.current >= 1)
                #expect(backends[0].handled.current == 3)
                #expect(balancer.statistics.retries >= 1)
            }
        }
    }

    @Test func allBackendsDownAnswers503AtOnce() throws {
        let configs = try (0..<3).map { BackendConfiguration(name: "d\($0)", host: "127.0.0.1", port: try closedPort()) }
        try withBalancer(testBalancerConfiguration(backends: configs)) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            for _ in 0..<5 {
                let start = monotonicMillis()
                client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                let response = try #require(client.readResponse())
                #expect(response.status == 503)
                #expect(response.header("Content-Type") == "application/json")
                #expect(response.bodyText.contains("\"no_backend\""))
                #expect(monotonicMillis() - start < 1_000)
            }
            // A request with a body is answered too (and the connection closed: its body was not read).
            client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
            #expect(client.readResponse()?.status == 503)
            #expect(balancer.backends.allSatisfy { $0.ejected })
        }
    }

    @Test func reusedConnectionClosedByTheBackendIsRetriedForAnyMethod() throws {
        let backend = try TestBackend(name: "short", idleTimeoutMillis: 200)
        defer { backend.stop() }
        try withBalancer(testBalancerConfiguration(backends: [backend.configuration])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            for _ in 0..<3 {
                client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
                #expect(client.readResponse()?.bodyText == "hi")
                usleep(450_000)  // the backend closes the pooled connection meanwhile
            }
            #expect(backend.handled.current == 3)
            let status = balancer.backends[0]
            #expect(status.failures == 0 && !status.ejected, "a stale pooled connection is not held against the backend")
        }
    }

    @Test func backendThatDoesNotAnswerGets504() throws {
        let silent = try ScriptedBackend { conn in
            _ = conn.readRequest()
            usleep(1_500_000)
        }
        defer { silent.stop() }
        var configuration = testBalancerConfiguration(backends: [silent.configuration("silent")])
        configuration.backendResponseTimeoutMillis = 300
        try withBalancer(configuration) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            let start = monotonicMillis()
            client.send("POST /name HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            #expect(client.readResponse()?.status == 504)
            #expect(monotonicMillis() - start < 1_400)
            #expect(silent.requests.current == 1, "a timed-out POST is not repeated")
            // A GET with nowhere else to go: 504 as well.
            #expect(try #require(try get(balancer.port, "/")).status == 504)
            #expect(silent.requests.current == 2)
        }
    }

    @Test func getThatTimesOutIsAskedOfAnotherBackend() throws {
        let silent = try ScriptedBackend { conn in
            _ = conn.readRequest()
            usleep(1_500_000)
        }
        defer { silent.stop() }
        let healthy = try TestBackend(name: "healthy")
        defer { healthy.stop() }
        var configuration = testBalancerConfiguration(backends: [silent.configuration("silent"), healthy.configuration])
        configuration.backendResponseTimeoutMillis = 300
        try withBalancer(configuration) { balancer in
            for _ in 0..<2 {  // one of the two starts on the silent backend
                let response = try #require(try get(balancer.port, "/name"))
                #expect(response.status == 200 && response.bodyText == "healthy")
            }
            #expect(silent.requests.current >= 1, "round robin sent some to the silent backend first")
            #expect(!balancer.backends[0].ejected, "a slow answer is not an ejection")
            #expect(balancer.statistics.gatewayTimeouts == 0)
        }
    }

    @Test func responseCutOffAfterItStartedClosesTheClient() throws {
        let cutting = try ScriptedBackend { conn in
            _ = conn.readRequest()
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            usleep(50_000)
            conn.reset()
        }
        defer { cutting.stop() }
        try withBalancer(testBalancerConfiguration(backends: [cutting.configuration("c")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(client.readResponse() == nil, "no complete response")
            #expect(client.peerClosed)
            #expect(cutting.requests.current == 1)
            #expect(poll(timeoutMillis: 2_000) { balancer.statistics.aborted == 1 })
        }
    }

    /// Edge-triggered registrations: a client that resets while its first pipelined
    /// request waits for the backend is cleaned up, its second request is never
    /// forwarded, and the proxy keeps serving others.
    @Test func clientResetWhilePipelinedRequestWaitsIsCleanedUp() throws {
        let slow = try ScriptedBackend { conn in
            while conn.readRequest() != nil {
                usleep(300_000)
                conn.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            }
        }
        defer { slow.stop() }
        try withBalancer(testBalancerConfiguration(backends: [slow.configuration("slow")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            client.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(poll(timeoutMillis: 2_000) { slow.requests.current == 1 })
            var reset = linger(l_onoff: 1, l_linger: 0)
            setsockopt(client.fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
            client.close()
            #expect(poll(timeoutMillis: 3_000) { balancer.backends.allSatisfy { $0.active == 0 } })
            usleep(400_000)
            #expect(slow.requests.current == 1, "the pipelined request of a gone client is not forwarded")
            let fresh = try #require(try get(balancer.port, "/c"))
            #expect(fresh.status == 200)
        }
    }

    @Test func slowClientHeadTimesOutWithoutTakingABackend() throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.clientHeaderTimeoutMillis = 300
            configuration.clientIdleTimeoutMillis = 400
            try withBalancer(configuration) { balancer in
                let slow = try RawHTTPConnection(port: balancer.port)
                defer { slow.close() }
                slow.send("GET / HTTP/1.1\r\nHo")
                let response = try #require(slow.readResponse(timeoutMillis: 2_000))
                #expect(response.status == 408)
                #expect(slow.waitForClose())
                #expect(backends[0].server.statistics.connectionsAccepted == 0)

                let idle = try RawHTTPConnection(port: balancer.port)
                defer { idle.close() }
                idle.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(idle.readResponse()?.status == 200)
                let start = monotonicMillis()
                #expect(idle.waitForClose(timeoutMillis: 2_000), "idle keep-alive connections are closed")
                #expect(monotonicMillis() - start >= 250)
            }
        }
    }

    @Test func shutdownLetsInFlightRequestsFinish() throws {
        try withBackends(1) { backends in
            let balancer = try Balancer(
                configuration: testBalancerConfiguration(backends: backends.map(\.configuration)), logger: quietLogger())
            try balancer.start()
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            let idle = try RawHTTPConnection(port: balancer.port)
            defer { idle.close() }
            client.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            usleep(100_000)
            let stopper = SendOnce { balancer.shutdown() }
            startThread { stopper.run() }
            let response = try #require(client.readResponse())
            #expect(response.bodyText == "slow")
            #expect(response.header("Connection") == "close")
            #expect(idle.waitForClose())
            balancer.shutdown()
        }
    }
}

/// Runs a closure once, whoever calls first.
final class SendOnce: Sendable {
    private let body: Mutex<(@Sendable () -> Void)?>
    init(_ body: @escaping @Sendable () -> Void) { self.body = Mutex(body) }
    func run() {
        let b = body.withLock { b -> (@Sendable () -> Void)? in
            defer { b = nil }
            return b
        }
        b?()
    }
}
