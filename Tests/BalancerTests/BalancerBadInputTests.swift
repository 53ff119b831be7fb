#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import TestSupport
import Testing

@Suite("Balancer: hostile requests and limits")
struct BalancerBadInputTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var request: String
        var status: Int
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(
            name: "Content-Length with Transfer-Encoding",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            status: 400),
        Case(
            name: "differing duplicate Content-Length",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            status: 400),
        Case(
            name: "Content-Length list with differing values",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 5\r\n\r\nabcde", status: 400),
        Case(name: "obs-fold", request: "GET /name HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n 2\r\n\r\n", status: 400),
        Case(
            name: "invalid chunk size",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            status: 400),
        Case(
            name: "chunk size with a sign",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
            status: 400),
        Case(
            name: "chunk data longer than its size",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            status: 400),
        Case(
            name: "Transfer-Encoding other than chunked",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", status: 501),
        Case(
            name: "Transfer-Encoding in HTTP/1.0",
            request: "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400),
        Case(name: "missing Host", request: "GET /name HTTP/1.1\r\n\r\n", status: 400),
        Case(name: "two Host fields", request: "GET /name HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400),
        Case(name: "bare LF", request: "GET /name HTTP/1.1\nHost: t\n\n", status: 400),
        Case(name: "space before colon", request: "GET /name HTTP/1.1\r\nHost : t\r\n\r\n", status: 400),
        Case(name: "HTTP/2.0 request line", request: "GET /name HTTP/2.0\r\nHost: t\r\n\r\n", status: 505),
        Case(name: "malformed request line", request: "GET  /name HTTP/1.1\r\nHost: t\r\n\r\n", status: 400),
        Case(
            name: "headers over 16 KiB",
            request: "GET /name HTTP/1.1\r\nHost: t\r\nX-Big: \(String(repeating: "a", count: 17 * 1024))\r\n\r\n",
            status: 431),
        Case(
            name: "Content-Length over the body limit",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: \(2 << 20)\r\n\r\nabc", status: 413),
        Case(
            name: "chunked body over the body limit",
            request: "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\nabc", status: 413),
    ]

    @Test(arguments: cases)
    func isRejectedAndNeverForwarded(_ c: Case) throws {
        try withBackends(1) { backends in
            var configuration = testBalancerConfiguration(backends: backends.map(\.configuration))
            configuration.limits.maxBodyBytes = 1 << 20
            try withBalancer(configuration) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                client.send(c.request)
                // A request that follows must not be read as a second request.
                client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                let response = try #require(client.readResponse())
                #expect(response.status == c.status)
                #expect(response.header("Content-Type") == "application/json")
                #expect(response.header("Connection") == "close")
                #expect(client.waitForClose(), "the connection is closed after the error")
                usleep(50_000)
                #expect(backends[0].handled.current == 0, "nothing reached a handler")
                #expect(balancer.statistics.badRequests == 1)
            }
        }
    }

    @Test func smugglingAttemptIsNotForwardedAsTwoRequests() throws {
        try withBackends(1) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                // CL.TE: a front end honouring Content-Length would forward "GET /name" as part of the body.
                client.send(
                    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + "0\r\n\r\nGET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(client.readResponse()?.status == 400)
                #expect(client.waitForClose())
                #expect(backends[0].handled.current == 0)
                #expect(backends[0].server.statistics.requests == 0)
            }
        }
    }
}
