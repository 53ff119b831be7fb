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
    /// `scripted` (named `closing`) and an in-process backend `other` behind a balancer with one loop,
    /// so every request of the client reuses that loop's pooled backend connections; `body` gets a
    /// client whose first GET went to `closing` and second to `other`: the next request goes to
    /// `closing`, on the connection of the first.
    func afterOneRequestEach(
        _ scripted: ScriptedBackend, _ body: (Balancer, RawHTTPConnection, TestBackend) throws -> Void
    ) throws {
        defer { scripted.stop() }
        let other = try TestBackend(name: "other")
        defer { other.stop() }
        var configuration = testBalancerConfiguration(backends: [scripted.configuration("closing"), other.configuration])
        configuration.eventLoops = 1
        try withBalancer(configuration) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            for expected in ["closing", "other"] {
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(client.readResponse()?.header("X-Backend") == expected)
            }
            try body(balancer, client, other)
        }
    }

    /// Answers the first request of its connection, then does `then`.
    func scripted(then: @escaping @Sendable (ScriptedConnection) -> Void) throws -> ScriptedBackend {
        try ScriptedBackend { conn in
            guard conn.readRequest() != nil else { return }
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Backend: closing\r\n\r\nclosing")
            then(conn)
        }
    }

    @Test func aPOSTTheBackendClosedOnBeforeReadingItGoesToAnotherBackend() throws {
        // As a server closing what it takes for an idle connection: its FIN leaves while the next
        // request is arriving, which it never reads. Its receive buffer is tiny, so most of that
        // request is still on its way when the FIN leaves.
        let closing = try scripted { conn in
            guard waitReadable(conn.fd, timeoutMillis: 5_000) else { return }
            usleep(50_000)
            shutdown(conn.fd, Int32(SHUT_WR))
            usleep(100_000)  // then the handler's end closes it: the unread bytes bring a reset
        }
        var tiny: Int32 = 1
        setsockopt(closing.listenFD, SOL_SOCKET, SO_RCVBUF, &tiny, socklen_t(MemoryLayout<Int32>.size))
        try afterOneRequestEach(closing) { balancer, client, _ in
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
        let closing = try scripted { conn in _ = conn.readRequest() }
        try afterOneRequestEach(closing) { balancer, client, other in
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
        let aborting = try scripted { conn in
            _ = conn.readRequest()
            conn.reset()
        }
        try afterOneRequestEach(aborting) { balancer, client, other in
            let handledBefore = other.handled.current
            client.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
            #expect(client.readResponse(timeoutMillis: 5_000)?.status == 502)
            #expect(other.handled.current == handledBefore)
            #expect(balancer.statistics.unreadRetries == 0)
        }
    }
}

/// Waits until `fd` has bytes to read (or its peer closed); false when the time is up.
func waitReadable(_ fd: Int32, timeoutMillis: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, timeoutMillis) == 1
}
