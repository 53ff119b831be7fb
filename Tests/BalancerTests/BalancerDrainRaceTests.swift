#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import TestSupport
import Testing

/// A node that drains closes its kept-alive connections; the balancer may be writing a request on
/// one at that moment. Whether the node read it decides whether a POST without Idempotency-Key may
/// go elsewhere: TCP tells (see `BackendConnection.closedBeforeRequestArrived`).
@Suite("Balancer: a request on a connection the backend closes")
struct BalancerDrainRaceTests {
    /// One balancer loop, so every request of the client reuses that loop's pooled backend connections.
    func oneLoop(_ backends: [BackendConfiguration]) -> BalancerConfiguration {
        var configuration = testBalancerConfiguration(backends: backends)
        configuration.eventLoops = 1
        return configuration
    }

    @Test func aPOSTTheBackendClosedOnBeforeReadingItGoesToAnotherBackend() throws {
        // Answers a first request on its connection; then, as a server closing what it takes for an idle
        // connection, sends its FIN while the next request is arriving, never reading it. Its receive
        // buffer is tiny, so most of that request is still on its way when the FIN leaves.
        let closing = try ScriptedBackend { conn in
            guard conn.readRequest() != nil else { return }
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Backend: closing\r\n\r\nclosing")
            guard waitReadable(conn.fd, timeoutMillis: 5_000) else { return }
            usleep(50_000)
            shutdown(conn.fd, Int32(SHUT_WR))
            usleep(100_000)  // then the handler's end closes it: the unread bytes bring a reset
        }
        var tiny: Int32 = 1
        setsockopt(closing.listenFD, SOL_SOCKET, SO_RCVBUF, &tiny, socklen_t(MemoryLayout<Int32>.size))
        defer { closing.stop() }
        let other = try TestBackend(name: "other")
        defer { other.stop() }
        try withBalancer(oneLoop([closing.configuration("closing"), other.configuration])) { balancer in
            let client = try TestClient(port: balancer.port)
            defer { client.close() }
            for expected in ["closing", "other"] {
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(client.readResponse()?.header("X-Backend") == expected)
            }
            let body = pattern(32 * 1024, seed: 3)
            client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: \(body.count)\r\n\r\n")
            client.send(body)
            let response = try #require(client.readResponse(timeoutMillis: 5_000), "no answer to the POST")
            #expect(response.status == 200)
            #expect(response.header("X-Backend") == "other")
            let echoed = response.body == body
            #expect(echoed, "the whole request went to the other backend (\(response.body.count) bytes back)")
            #expect(closing.requests.current == 1, "the closing backend read only the first request")
            #expect(balancer.statistics.unreadRetries == 1)
            #expect(balancer.statistics.badGateway == 0)
        }
    }

    @Test func aPOSTTheBackendReadBeforeClosingIsNotSentAgain() throws {
        // Reads the second request whole, then closes without answering (as a crash would).
        let closing = try ScriptedBackend { conn in
            guard conn.readRequest() != nil else { return }
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Backend: closing\r\n\r\nclosing")
            _ = conn.readRequest()
        }
        defer { closing.stop() }
        let other = try TestBackend(name: "other")
        defer { other.stop() }
        try withBalancer(oneLoop([closing.configuration("closing"), other.configuration])) { balancer in
            let client = try TestClient(port: balancer.port)
            defer { client.close() }
            for expected in ["closing", "other"] {
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(client.readResponse()?.header("X-Backend") == expected)
            }
            let handledBefore = other.handled.current
            client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
            let response = try #require(client.readResponse(timeoutMillis: 5_000))
            #expect(response.status == 502)
            #expect(closing.requests.current == 2, "the backend read the POST")
            #expect(other.handled.current == handledBefore, "a POST that may have been acted on is not repeated")
            #expect(balancer.statistics.unreadRetries == 0)
        }
    }

    @Test func aResetWithoutAFINProvesNothing() throws {
        // Reads the second request, then aborts the connection (SO_LINGER 0): a reset, as when it had not read it.
        let aborting = try ScriptedBackend { conn in
            guard conn.readRequest() != nil else { return }
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Backend: aborting\r\n\r\naborting")
            _ = conn.readRequest()
            conn.reset()
        }
        defer { aborting.stop() }
        let other = try TestBackend(name: "other")
        defer { other.stop() }
        try withBalancer(oneLoop([aborting.configuration("aborting"), other.configuration])) { balancer in
            let client = try TestClient(port: balancer.port)
            defer { client.close() }
            for _ in 0..<2 {
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(client.readResponse()?.status == 200)
            }
            let handledBefore = other.handled.current
            client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
            #expect(client.readResponse(timeoutMillis: 5_000)?.status == 502)
            #expect(other.handled.current == handledBefore)
        }
    }
}

/// Waits until `fd` has bytes to read (or its peer closed); false when the time is up.
func waitReadable(_ fd: Int32, timeoutMillis: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, timeoutMillis) == 1
}
