#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import SystemSupport
import TestSupport
import Testing

@Suite("Balancer: request body deadline")
struct BalancerBodyDeadlineTests {
    /// One byte every 200 ms never leaves the client quiet for the 1 s body timeout: only a
    /// deadline on the whole body ends it. The backend, which got the head, is let go.
    @Test func slowBodyGets408AtTheTotalDeadline() throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.clientBodyTimeoutMillis = 1_000
            try withBalancer(configuration) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
                let trickle = TrickleSender(
                    client.fd, Array(repeating: UInt8(ascii: "x"), count: 100), intervalMillis: 200)
                defer { trickle.stop() }
                // 10 s: 10× the 1 s deadline, and half the 20 s the trickled body would take to complete.
                let response = try #require(client.readResponse(timeoutMillis: 10_000), "no answer within 10 s; the deadline is 1 s")
                #expect(response.status == 408)
                #expect(response.bodyText.contains("\"request_timeout\""))
                #expect(response.header("Connection") == "close")
                #expect(client.waitForClose())
                #expect(trickle.sent < 100)
                #expect(balancer.statistics.clientTimeouts == 1)

                // The backend connection that carried the partial request is closed, not pooled.
                #expect(waitUntil(timeout: 3) { balancer.backends[0].active == 0 })
                #expect(backends[0].handled.current == 0, "the backend never got a complete request")
                let next = try #require(try get(balancer.port, "/name"))
                #expect(next.status == 200)
                #expect(backends[0].server.statistics.parseErrors == 0)
            }
        }
    }

    /// Time the backend does not take the body (the balancer stops reading the client then)
    /// is not the client's: the backend reads nothing for 3× the 2 s body deadline, then
    /// everything; the client sends its last bytes once the backend reads, and the deadline is met.
    /// (The time that counts is only what passes outside the hold: a few milliseconds, against 2 s.)
    @Test func timeTheBackendHoldsTheBodyUpDoesNotCount() throws {
        let size = 8 << 20
        let reading = Shared(false)
        let backend = try ScriptedBackend { conn in
            usleep(6_000_000)  // reads nothing for 3× the body deadline
            reading.value = true
            guard let request = conn.readRequest() else { return }
            let answer = "\(request.body.count)"
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: \(answer.utf8.count)\r\n\r\n\(answer)")
        }
        defer { backend.stop() }
        var configuration = testBalancerConfiguration(backends: [backend.configuration("held")])
        configuration.clientBodyTimeoutMillis = 2_000
        configuration.backendIdleTimeoutMillis = 30_000
        configuration.clientWriteTimeoutMillis = 30_000
        configuration.bufferHighWater = 4096
        try withBalancer(configuration) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            let head = Array("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: \(size)\r\n\r\n".utf8)
            // All but the last bytes at once: more than the sockets to the backend hold, so the balancer is held up.
            let sender = SendJob(client.fd, head + [UInt8](repeating: 7, count: size - 10))
            #expect(sender.wait())
            try #require(poll(timeoutMillis: 20_000) { reading.value })
            client.send([UInt8](repeating: 7, count: 10))
            let response = try #require(client.readResponse(timeoutMillis: 20_000))
            #expect(response.status == 200)
            #expect(response.bodyText == "\(size)")
            #expect(balancer.statistics.clientTimeouts == 0)
        }
    }
}
