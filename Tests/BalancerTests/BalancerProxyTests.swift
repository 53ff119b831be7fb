#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

@Suite("Balancer: forwarding over loopback")
struct BalancerProxyTests {
    @Test func exactRoundRobinOverThreeBackendsOnOneConnection() throws {
        try withBackends(3) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                var counts: [String: Int] = [:]
                for _ in 0..<300 {
                    client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                    let response = try #require(client.readResponse())
                    #expect(response.status == 200)
                    counts[response.header("X-Backend") ?? "?", default: 0] += 1
                }
                #expect(counts == ["b0": 100, "b1": 100, "b2": 100])
                #expect(backends.map { $0.handled.current } == [100, 100, 100])
                // Keep-alive both ways: one client connection, one pooled connection per backend.
                #expect(balancer.statistics.connectionsAccepted == 1)
                for b in backends {
                    #expect(b.server.statistics.connectionsAccepted == 1, "\(b.name) saw \(b.server.statistics.connectionsAccepted) connections")
                }
            }
        }
    }

    @Test func exactRoundRobinWithConcurrentClients() throws {
        try withBackends(3) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let port = balancer.port
                let failures = Counter()
                let finished = onThreads(6, seconds: 30) { _ in
                    guard let client = try? RawHTTPConnection(port: port) else {
                        failures.increment()
                        return
                    }
                    defer { client.close() }
                    for _ in 0..<50 {
                        client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                        if client.readResponse()?.status != 200 { failures.increment() }
                    }
                }
                #expect(finished)
                #expect(failures.current == 0)
                #expect(backends.map { $0.handled.current } == [100, 100, 100])
                for b in backends {
                    // At most one pooled connection per concurrent request and loop.
                    #expect(b.server.statistics.connectionsAccepted <= 6)
                }
            }
        }
    }

    @Test func weightsShareTheRoundRobin() throws {
        try withBackends(3) { backends in
            var configs = backends.map(\.configuration)
            configs[0].weight = 1
            configs[1].weight = 2
            configs[2].weight = 3
            try withBalancer(testBalancerConfiguration(backends: configs)) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                var sequence: [String] = []
                for _ in 0..<60 {
                    client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                    sequence.append(try #require(client.readResponse()).header("X-Backend") ?? "?")
                }
                #expect(backends.map { $0.handled.current } == [10, 20, 30])
                // Smooth: never more than two in a row for the heaviest backend.
                var run = 0
                var longest = 0
                for (i, name) in sequence.enumerated() {
                    run = i > 0 && sequence[i - 1] == name ? run + 1 : 1
                    longest = max(longest, run)
                }
                #expect(longest <= 2, "\(sequence)")
            }
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        try withBackends(3) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                var batch = ""
                for i in 0..<6 {
                    let body = "body-\(i)"
                    batch += "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                }
                batch += "PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                batch += "GET /name HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                client.send(batch)
                var bodies: [String] = []
                for _ in 0..<8 { bodies.append(client.readResponse()?.bodyText ?? "<none>") }
                #expect(Array(bodies[0..<7]) == (0..<6).map { "body-\($0)" } + ["abcde"])
                #expect(["b0", "b1", "b2"].contains(bodies[7]))
                #expect(client.waitForClose(), "Connection: close on the last request closes the connection")
            }
        }
    }

    @Test func largeBodiesStreamBothWaysByteExact() throws {
        try withBackends(2) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let size = 8 << 20
                let payload = pattern(size, seed: 42)
                // Content-Length upload, echoed back with Content-Length.
                do {
                    let client = try RawHTTPConnection(port: balancer.port)
                    defer { client.close() }
                    let head = Array("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: \(size)\r\n\r\n".utf8)
                    let sender = SendJob(client.fd, head + payload)
                    let response = try #require(client.readResponse(timeoutMillis: 20_000))
                    #expect(sender.wait())
                    #expect(response.status == 200)
                    #expect(response.body.count == size)
                    #expect(response.body == payload)
                }
                // Chunked upload (re-chunked to the backend).
                do {
                    let client = try RawHTTPConnection(port: balancer.port)
                    defer { client.close() }
                    var bytes = Array("PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
                    var offset = 0
                    var step = 1
                    while offset < size {
                        let n = min(step, size - offset)
                        bytes += Array("\(String(n, radix: 16))\r\n".utf8) + payload[offset..<offset + n] + [13, 10]
                        offset += n
                        step = step * 3 + 7
                        if step > 200_000 { step = 777 }
                    }
                    bytes += Array("0\r\n\r\n".utf8)
                    let sender = SendJob(client.fd, bytes)
                    let response = try #require(client.readResponse(timeoutMillis: 20_000))
                    #expect(sender.wait())
                    #expect(response.status == 200)
                    #expect(response.body == payload)
                }
                // Content-Length download.
                let download = try #require(try get(balancer.port, "/big?n=\(size)"))
                #expect(download.header("Content-Length") == String(size))
                #expect(download.body == pattern(size, seed: 7))
            }
        }
    }

    @Test func chunkedAndCloseDelimitedResponsesAreReframed() throws {
        let size = 8 << 20
        let payload = pattern(size, seed: 9)
        let backend = try ScriptedBackend { conn in
            while let (head, _) = conn.readRequest() {
                if head.target == "/chunked" {
                    conn.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n")
                    var offset = 0
                    var step = 5
                    while offset < size {
                        let n = min(step, size - offset)
                        conn.write(Array("\(String(n, radix: 16))\r\n".utf8) + payload[offset..<offset + n] + [13, 10])
                        offset += n
                        step = step < 100_000 ? step * 4 : 3
                    }
                    conn.write("0\r\nX-Trailer: dropped\r\n\r\n")
                } else if head.target == "/until-close" {
                    conn.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    conn.write(Array(payload[0..<100_000]))
                    return
                } else if head.method == "HEAD" {
                    conn.write("HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
                } else {
                    conn.write("HTTP/1.1 204 No Content\r\n\r\n")
                }
            }
        }
        defer { backend.stop() }
        try withBalancer(testBalancerConfiguration(backends: [backend.configuration("s")])) { balancer in
            let client = try RawHTTPConnection(port: balancer.port)
            defer { client.close() }
            client.send("GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
            let chunked = try #require(client.readResponse(timeoutMillis: 20_000))
            #expect(chunked.framing == .chunked)
            #expect(chunked.header("X-Kind") == "chunked")
            #expect(chunked.body == payload)

            client.send("HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n")
            let head = try #require(client.readResponse(headOnly: true))
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == "12345")
            #expect(head.body.isEmpty)

            client.send("GET /empty HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(client.readResponse()?.status == 204)

            client.send("GET /until-close HTTP/1.1\r\nHost: t\r\n\r\n")
            let untilClose = try #require(client.readResponse())
            #expect(untilClose.framing == .chunked, "an HTTP/1.1 client gets a close-delimited body chunked")
            #expect(untilClose.body == Array(payload[0..<100_000]))
            client.send("GET /empty HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(client.readResponse()?.status == 204, "the client connection stays usable")

            // An HTTP/1.0 client gets the close-delimited body as is, then the close.
            let old = try RawHTTPConnection(port: balancer.port)
            defer { old.close() }
            old.send("GET /until-close HTTP/1.0\r\n\r\n")
            let response = try #require(old.readResponse())
            #expect(response.body == Array(payload[0..<100_000]))
        }
        #expect(backend.requests.current == 6)
    }

    @Test func headersAreRewritten() throws {
        try withBackends(1) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let response = try #require(try get(
                    balancer.port, "/headers",
                    headers: "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nForwarded: for=203.0.113.7\r\n"
                        + "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                        + "Proxy-Authorization: Basic x\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Kept: yes\r\n"))
                let lines = response.bodyText.split(separator: "\n").map(String.init)
                func value(_ name: String) -> [String] {
                    lines.filter { $0.lowercased().hasPrefix(name.lowercased() + ":") }
                        .map { String($0.dropFirst(name.count + 1)).trimmingSpaces }
                }
                #expect(value("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"])
                #expect(value("X-Forwarded-Proto") == ["http"])
                #expect(value("Forwarded") == ["for=203.0.113.7, for=127.0.0.1;proto=http"])
                #expect(value("X-Kept") == ["yes"])
                #expect(value("Host") == ["test"])
                for hop in ["Connection", "X-Hop", "Keep-Alive", "Proxy-Authorization", "TE", "Upgrade"] {
                    #expect(value(hop).isEmpty, "\(hop) must not be forwarded")
                }
                let id = try #require(value("X-Request-ID").first)
                #expect(id.count == 32 && id.allSatisfy(\.isHexDigit))

                let kept = try #require(try get(balancer.port, "/headers", headers: "X-Request-ID: abc-123\r\n"))
                #expect(kept.bodyText.contains("X-Request-ID: abc-123"))
            }
        }
    }

    @Test func responseHopByHopHeadersAreStripped() throws {
        let backend = try ScriptedBackend { conn in
            while conn.readRequest() != nil {
                conn.write(
                    "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                        + "Proxy-Authenticate: Basic\r\nX-Public: 2\r\nContent-Length: 2\r\n\r\nok")
            }
        }
        defer { backend.stop() }
        try withBalancer(testBalancerConfiguration(backends: [backend.configuration("s")])) { balancer in
            let response = try #require(try get(balancer.port, "/"))
            #expect(response.bodyText == "ok")
            #expect(response.header("X-Public") == "2")
            for hop in ["X-Secret", "Keep-Alive", "Proxy-Authenticate", "Connection"] {
                #expect(response.header(hop) == nil, "\(hop) must not be forwarded")
            }
        }
    }

    @Test func http10ClientsAndExpectContinue() throws {
        try withBackends(1) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                client.send("GET /name HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                let first = try #require(client.readResponse())
                #expect(first.header("Connection") == "keep-alive")
                #expect(first.bodyText == "b0")
                client.send("GET /name HTTP/1.0\r\n\r\n")
                #expect(client.readResponse()?.bodyText == "b0")
                #expect(client.waitForClose())

                let expecting = try RawHTTPConnection(port: balancer.port)
                defer { expecting.close() }
                expecting.send("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
                // The balancer answers 100 Continue itself: the client sends its body only once it has it.
                let interim = try #require(expecting.readResponse(timeoutMillis: 5_000), "no 100 Continue for a waiting client")
                #expect(interim.status == 100)
                let handledBefore = backends[0].handled.current
                #expect(handledBefore == 2, "the backend has not had the POST yet")
                expecting.send("hello")
                let final = try #require(expecting.readResponse())
                #expect(final.status == 200)
                #expect(final.bodyText == "hello")
                #expect(backends[0].handled.current == handledBefore + 1)
            }
        }
    }
}

/// Writes bytes on a background thread (so a test can read the response meanwhile).
final class SendJob: Sendable {
    private let done = Mutex<Bool?>(nil)

    init(_ fd: Int32, _ bytes: [UInt8]) {
        startThread { [self] in
            let ok = Sockets.writeAll(fd, bytes)
            done.withLock { $0 = ok }
        }
    }

    /// Whether all bytes were written (waits up to 20 s).
    func wait() -> Bool {
        let deadline = monotonicMillis() + 20_000
        while monotonicMillis() < deadline {
            if let ok = done.withLock({ $0 }) { return ok }
            usleep(2_000)
        }
        return false
    }
}
