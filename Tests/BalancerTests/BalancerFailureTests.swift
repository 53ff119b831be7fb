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

    /// A backend killed (its connections reset, its port refusing, as when its process dies)
    /// while four clients send GETs and keyed POSTs: every request is answered 200 by the others.
    @Test func backendKilledMidRunGivesNoClientVisibleErrors() throws {
        let backends = try (0..<3).map { try keepAliveBackend(name: "k\($0)") }
        defer { for b in backends { b.stop() } }
        let configs = backends.enumerated().map { $0.element.configuration("k\($0.offset)") }
        try withBalancer(testBalancerConfiguration(backends: configs)) { balancer in
            let port = balancer.port
            let failures = Counter()
            let ok = Counter()
            let stopper = SendOnce { backends[2].kill() }
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
            #expect(backends[2].requests.current >= 1, "the killed backend had a share before it died")
            #expect(balancer.backends[2].failures >= 1, "the balancer saw it die")
        }
    }

    /// A connect failure means the request never reached a backend: even a POST without an
    /// Idempotency-Key goes to another one, and lands there exactly once.
    @Test func postWithoutIdempotencyKeyIsRetriedAfterAConnectFailure() throws {
        try withBackends(1) { backends in
            // A fresh balancer's round robin starts at the first backend: the one that refuses connections.
            let refusing = BackendConfiguration(name: "refusing", host: "127.0.0.1", port: try closedPort())
            var configuration = testBalancerConfiguration(backends: [refusing] + backends.map(\.configuration))
            configuration.ejectBaseMillis = 60_000  // stays out for the rest of the test
            try withBalancer(configuration) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
                let response = try #require(client.readResponse())
                #expect(response.status == 200)
                #expect(response.header("X-Backend") == "b0")
                #expect(response.bodyText == "body")
                #expect(backends[0].handled.current == 1, "exactly once")
                let status = balancer.backends[0]
                #expect(status.failures == 1 && status.ejected, "the refusing backend was tried first, and ejected")
            }
        }
    }

    /// The replay copy holds a request of up to `replayBufferBytes` (64 KiB by default, head
    /// included). The backend tried first reads the whole request and closes without answering:
    /// a PUT under the cap is sent again to the other backend; one over it cannot be, and gets
    /// 502 `bad_gateway`.
    @Test(arguments: [60 * 1_024, 64 * 1_024])
    func idempotentRequestIsRetriedOnlyWhileItFitsTheReplayCopy(bodySize: Int) throws {
        let reading = try ScriptedBackend { conn in
            _ = conn.readRequest()
            conn.close()  // a FIN after the whole request was read: it was read
        }
        defer { reading.stop() }
        try withBackends(1) { backends in
            // A fresh balancer asks the first backend first.
            let configuration = testBalancerConfiguration(backends: [reading.configuration("reading")] + backends.map(\.configuration))
            #expect(configuration.replayBufferBytes == 64 * 1_024)
            try withBalancer(configuration) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                let body = pattern(bodySize, seed: 3)
                client.send(Array("PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: \(bodySize)\r\n\r\n".utf8) + body)
                let response = try #require(client.readResponse())
                #expect(reading.requests.current == 1)
                if bodySize < configuration.replayBufferBytes - 1_024 {
                    #expect(response.status == 200)
                    #expect(response.body == body)
                    #expect(backends[0].handled.current == 1)
                } else {
                    #expect(response.status == 502)
                    #expect(response.bodyText.contains("\"bad_gateway\""))
                    #expect(backends[0].handled.current == 0, "not repeated: no copy was kept")
                }
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
        var configuration = testBalancerConfiguration(backends: configs)
        configuration.ejectBaseMillis = 60_000  // ejected for the whole test, however slow the machine
        try withBalancer(configuration) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            for i in 0..<5 {
                client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                let response = try #require(client.readResponse())
                #expect(response.status == 503)
                #expect(response.header("Content-Type") == "application/json")
                #expect(response.bodyText.contains("\"no_backend\""))
                // "At once": after the first request ejected them all, no connection is even attempted.
                #expect(balancer.backends.map(\.failures) == [1, 1, 1], "request \(i)")
            }
            // A request with a body is answered too (and the connection closed: its body was not read).
            client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
            #expect(client.readResponse()?.status == 503)
            #expect(balancer.backends.allSatisfy { $0.ejected })
        }
    }

    /// The backend closes each kept-alive connection right after its first answer (no
    /// `Connection: close`, so the balancer pools it), as a server whose idle timeout passed does.
    /// The test waits until the backend has closed it before the next request, so every request
    /// after the first finds a stale pooled connection: each is answered, whatever its method.
    @Test func reusedConnectionClosedByTheBackendIsRetriedForAnyMethod() throws {
        let backend = try ScriptedBackend { conn in
            guard let (_, body) = conn.readRequest() else { return }
            conn.write(Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body)
        }
        defer { backend.stop() }
        try withBalancer(testBalancerConfiguration(backends: [backend.configuration("closing")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            let requests = [
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
                "PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
                "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n",
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
            ]
            for (i, request) in requests.enumerated() {
                client.send(request)
                let response = try #require(client.readResponse(), "request \(i)")
                #expect(response.status == 200, "request \(i)")
                // The pooled connection is closed by the backend before the next request goes out.
                try #require(poll(timeoutMillis: 5_000) { backend.closedConnections.current == i + 1 })
            }
            #expect(backend.requests.current == requests.count)
            let status = balancer.backends[0]
            #expect(status.failures == 0 && !status.ejected, "a stale pooled connection is not held against the backend")
        }
    }

    /// A pooled connection that breaks under a request (the backend reads it, then closes without
    /// answering) is retried on a new connection for a request that may be repeated, and the
    /// failure is not held against the backend: it is the only one, and keeps serving.
    @Test func failureOnAReusedConnectionIsRetriedAndNotHeldAgainstTheBackend() throws {
        // Each connection: the first request is answered, the second read and dropped.
        let backend = try ScriptedBackend { conn in
            guard conn.readRequest() != nil else { return }
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            _ = conn.readRequest()
        }
        defer { backend.stop() }
        try withBalancer(testBalancerConfiguration(backends: [backend.configuration("dropping")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            for i in 0..<3 {
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                let response = try #require(client.readResponse(), "request \(i)")
                #expect(response.status == 200 && response.bodyText == "ok", "request \(i)")
            }
            // 1st on connection 1; 2nd dropped on its reuse, answered on connection 2; 3rd dropped there, answered on 3.
            #expect(backend.connections.current == 3)
            #expect(backend.requests.current == 5)
            let status = balancer.backends[0]
            #expect(status.failures == 0 && !status.ejected, "a failure on a reused connection is not held against the backend")
        }
    }

    @Test func backendThatDoesNotAnswerGets504() throws {
        let silent = try ScriptedBackend { conn in
            _ = conn.readRequest()
            _ = conn.readRequest()  // never answers: waits until the balancer closes the connection (or 5 s)
        }
        defer { silent.stop() }
        var configuration = testBalancerConfiguration(backends: [silent.configuration("silent")])
        configuration.backendResponseTimeoutMillis = 300
        try withBalancer(configuration) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            client.send("POST /name HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            // 5 s: over 10× the 300 ms timeout, and the silent backend holds the connection as long.
            let response = try #require(client.readResponse(timeoutMillis: 5_000))
            #expect(response.status == 504)
            #expect(response.bodyText.contains("\"gateway_timeout\""))
            #expect(silent.requests.current == 1, "a timed-out POST is not repeated")
            // A GET with nowhere else to go: 504 as well.
            let other = try RawHTTPConnection(port: balancer.port)
            defer { other.close() }
            other.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try #require(other.readResponse(timeoutMillis: 5_000)).status == 504)
            #expect(silent.requests.current == 2)
        }
    }

    @Test func getThatTimesOutIsAskedOfAnotherBackend() throws {
        let silent = try ScriptedBackend { conn in
            _ = conn.readRequest()
            _ = conn.readRequest()  // never answers: waits until the balancer closes the connection (or 5 s)
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

    /// The backend resets the connection once the client has received the start of the response
    /// (so the response has started, whatever the machine's speed): the client is closed.
    @Test func responseCutOffAfterItStartedClosesTheClient() throws {
        let clientHasTheHead = Shared(false)
        let cutting = try ScriptedBackend { conn in
            _ = conn.readRequest()
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            _ = poll(timeoutMillis: 10_000) { clientHasTheHead.value }
            conn.reset()
        }
        defer { cutting.stop() }
        try withBalancer(testBalancerConfiguration(backends: [cutting.configuration("c")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            client.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            let started = poll(timeoutMillis: 10_000) {
                _ = client.readMore(timeoutMillis: 100)
                return String(decoding: client.unconsumed, as: UTF8.self).hasSuffix("partial")
            }
            clientHasTheHead.value = true
            try #require(started, "the start of the response did not reach the client")
            #expect(client.readResponse() == nil, "no complete response")
            #expect(client.peerClosed)
            #expect(cutting.requests.current == 1)
            #expect(poll(timeoutMillis: 2_000) { balancer.statistics.aborted == 1 })
        }
    }

    /// Edge-triggered registrations: a client that resets while its first pipelined
    /// request waits for the backend is cleaned up, its second request is never
    /// forwarded, and the proxy keeps serving others.
    /// The backend holds its answer to /a until the balancer has cleaned the gone client up.
    @Test func clientResetWhilePipelinedRequestWaitsIsCleanedUp() throws {
        let cleanedUp = Shared(false)
        let targets = Shared([String]())
        let slow = try ScriptedBackend { conn in
            while let (head, _) = conn.readRequest() {
                targets.update { $0.append(head.target) }
                if head.target == "/a" { _ = poll(timeoutMillis: 10_000) { cleanedUp.value } }
                conn.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            }
        }
        defer { slow.stop() }
        try withBalancer(testBalancerConfiguration(backends: [slow.configuration("slow")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            client.send("GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(poll(timeoutMillis: 5_000) { slow.requests.current == 1 })
            var reset = linger(l_onoff: 1, l_linger: 0)
            setsockopt(client.fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
            client.close()
            #expect(poll(timeoutMillis: 5_000) { balancer.backends.allSatisfy { $0.active == 0 } })
            cleanedUp.value = true
            // The exchange's backend connection was closed with it: the backend's handler ends.
            #expect(poll(timeoutMillis: 5_000) { slow.closedConnections.current == 1 })
            let fresh = try #require(try get(balancer.port, "/c"))
            #expect(fresh.status == 200)
            #expect(targets.value == ["/a", "/c"], "the pipelined request of a gone client is not forwarded")
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
                // 3 s: 10× the 300 ms head timeout.
                let response = try #require(slow.readResponse(timeoutMillis: 3_000))
                #expect(response.status == 408)
                #expect(slow.waitForClose())
                #expect(backends[0].server.statistics.connectionsAccepted == 0)

                let idle = try RawHTTPConnection(port: balancer.port)
                defer { idle.close() }
                idle.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                let answer = try #require(idle.readResponse())
                #expect(answer.status == 200)
                #expect(answer.header("Connection") != "close", "kept alive after the answer")
                // 4 s: 10× the 400 ms idle timeout.
                #expect(idle.waitForClose(timeoutMillis: 4_000), "idle keep-alive connections are closed")
                #expect(balancer.statistics.clientTimeouts == 1, "only the slow head counted as a client timeout")
            }
        }
    }

    /// The backend holds its answer until the shutdown has closed an idle connection: the request is in
    /// flight when the shutdown starts, whatever the machine's speed, and is still answered.
    @Test func shutdownLetsInFlightRequestsFinish() throws {
        let release = Shared(false)
        let held = try ScriptedBackend { conn in
            guard conn.readRequest() != nil else { return }
            _ = poll(timeoutMillis: 10_000) { release.value }
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        }
        defer { held.stop() }
        var configuration = testBalancerConfiguration(backends: [held.configuration("held")])
        configuration.shutdownGraceMillis = 10_000
        let balancer = try Balancer(configuration: configuration, logger: quietLogger())
        try balancer.start()
        let client = try RawHTTPConnection(port: balancer.port)
        defer { client.close() }
        let idle = try RawHTTPConnection(port: balancer.port)
        defer { idle.close() }
        client.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        try #require(poll(timeoutMillis: 5_000) { held.requests.current == 1 }, "the request reached the backend")
        let stopper = SendOnce { balancer.shutdown() }
        startThread { stopper.run() }
        // The idle connection is closed by the shutdown: it is under way while the request waits for its answer.
        #expect(idle.waitForClose(timeoutMillis: 5_000), "the idle connection is closed at once")
        release.value = true
        let response = try #require(client.readResponse())
        #expect(response.bodyText == "slow")
        #expect(response.header("Connection") == "close")
        balancer.shutdown()
    }
}

/// A scripted backend that answers every request on a connection (keep-alive), naming itself
/// in `X-Backend`.
func keepAliveBackend(name: String) throws -> ScriptedBackend {
    try ScriptedBackend { conn in
        while conn.readRequest() != nil {
            conn.write("HTTP/1.1 200 OK\r\nX-Backend: \(name)\r\nContent-Length: \(name.utf8.count)\r\n\r\n\(name)")
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
