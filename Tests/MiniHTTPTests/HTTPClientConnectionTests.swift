#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SystemSupport
import Testing
import TestSupport

/// The one blocking client the probes and benchmarks use, against our server and a raw socket.
@Suite struct HTTPClientConnectionTests {
    @Test func keepsOneConnectionForManyRequestsAndSendsTheBody() throws {
        try withServer(responder: echoResponder) { server in
            let client = HTTPClientConnection(host: "127.0.0.1", port: server.port)
            for i in 0..<20 {
                let response = try client.request("POST", "/n/\(i)", headers: [("X-A", "1")], body: Array("body \(i)".utf8))
                #expect(response.status == 200)
                #expect(String(decoding: response.body, as: UTF8.self) == "POST /n/\(i)\nbody \(i)")
                let kept = client.isConnected
                #expect(kept)
            }
            let head = try client.request("GET", "/x")
            #expect(head.head.headers["Content-Type"] == "text/plain")
        }
    }

    /// A server on a raw socket: `Connection: close` (the client reconnects), then a chunked
    /// body after a 100 Continue, then silence: every framing is read by HTTPResponseParser,
    /// and a server that never answers costs the timeout only.
    @Test func readsAnyFramingReconnectsAndGivesUpOnSilence() throws {
        let listener = try Sockets.listen(host: "127.0.0.1", port: 0)
        defer { close(listener) }
        let port = Sockets.localPort(listener)
        let clientHungUp = Counter()
        let served = BackgroundJob {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let first = Sockets.accept(listener)
            guard first >= 0 else { return }
            _ = recv(first, &buffer, buffer.count, 0)
            _ = Sockets.writeAll(first, Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".utf8))
            close(first)
            let second = Sockets.accept(listener)
            guard second >= 0 else { return }
            defer { close(second) }
            _ = recv(second, &buffer, buffer.count, 0)
            _ = Sockets.writeAll(
                second,
                Array("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".utf8))
            _ = recv(second, &buffer, buffer.count, 0)  // the third request: never answered
            // Waits for the client to hang up by itself, up to 10 s (33x its 300 ms timeout):
            // a client without a timeout would still be waiting when this gives up.
            let deadline = monotonicMillis() + 10_000
            var outcome = receiveSome(second, deadline: deadline)
            while case .bytes = outcome { outcome = receiveSome(second, deadline: deadline) }
            if case .closed = outcome { clientHungUp.increment() }
        }
        let client = HTTPClientConnection(host: "127.0.0.1", port: port, timeoutMillis: 300)
        let closing = try client.request("GET", "/close")
        #expect(closing.status == 200 && closing.body == Array("ok".utf8))
        let reopened = !client.isConnected
        #expect(reopened, "the server said close: the next request opens a new connection")
        let chunked = try client.request("GET", "/chunked")
        #expect(chunked.status == 200 && chunked.body == Array("hello".utf8))
        #expect(throws: HTTPClientError.self) { try client.request("GET", "/silence") }
        let closedAfterFailure = !client.isConnected
        #expect(closedAfterFailure, "a failed exchange closes the connection")
        #expect(poll(timeoutMillis: 15_000) { served.isDone })
        #expect(clientHungUp.current == 1, "the client did not give up on a silent server by itself")
    }

    @Test func aPortNobodyListensOnIsAClearError() throws {
        let client = HTTPClientConnection(host: "127.0.0.1", port: try Sockets.freeLoopbackPort(), timeoutMillis: 500)
        do {
            _ = try client.request("GET", "/")
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("cannot connect to 127.0.0.1:"))
        }
    }
}

/// `Sockets.freeLoopbackPort` never hands out the same port twice in a row (CI once saw two demo
/// nodes given one port, the kernel having returned a port just released).
@Suite struct FreePortTests {
    @Test func portsHandedOutAreDistinctAndBindable() throws {
        var seen = Set<Int>()
        for _ in 0..<500 {
            let port = try Sockets.freeLoopbackPort()
            #expect(seen.insert(port).inserted, "port \(port) handed out twice")
        }
        let fd = try Sockets.listen(host: "127.0.0.1", port: try Sockets.freeLoopbackPort())
        close(fd)
    }
}
