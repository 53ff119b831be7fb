#if canImport(Glibc)
import Glibc
#endif
import Testing

@testable import MiniHTTP

@Suite("HTTPServer: request bodies")
struct RequestBodyTests {
    /// One byte every 200 ms never leaves the connection quiet for the 1 s body timeout:
    /// only a deadline on the whole body ends it.
    @Test func slowBodyIsCutAtTheTotalDeadline() throws {
        try withServer(testConfiguration(bodyTimeoutMillis: 1_000), responder: echoResponder) { server in
            let client = try RawClient(port: server.port)
            defer { client.close() }
            let start = monotonicMillis()
            client.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            let trickle = TrickleSender(client.fd, Array(repeating: UInt8(ascii: "x"), count: 100), intervalMillis: 200)
            defer { trickle.stop() }
            let response = try #require(client.readResponse(timeoutMillis: 3_000), "no answer within 3 s; the deadline is 1 s")
            let elapsed = monotonicMillis() - start
            #expect(response.status == 408)
            #expect(response.header("Connection") == "close")
            #expect(elapsed < 3_000, "408 after \(elapsed) ms; the deadline is 1 s")
            #expect(client.waitForClose())
            #expect(trickle.sent < 100)
            #expect(server.statistics.timeouts == 1)
            #expect(server.statistics.requests == 0, "the handler never saw the request")
        }
    }
}
