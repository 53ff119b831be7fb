#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import SystemSupport
import TestSupport
import Testing

@Suite("Balancer: many idle clients")
struct BalancerIdleClientsTests {
    /// 3,000 idle keep-alive connections (each side of each is a descriptor
    /// of this process, whose limit is 20,000; the 10,000 of the issue need
    /// the balancer in its own process) while another client is served.
    @Test func idleConnectionsAreHeldWhileOthersAreServed() throws {
        try withBackends(1) { backends in
            try withBalancer(testBalancerConfiguration(backends: backends.map(\.configuration))) { balancer in
                var idle: [Int32] = []
                defer { for fd in idle { close(fd) } }
                for _ in 0..<3_000 {
                    idle.append(try Sockets.connect(host: "127.0.0.1", port: balancer.port, timeoutMillis: 2_000))
                }
                #expect(poll(timeoutMillis: 5_000) { balancer.statistics.connectionsAccepted == 3_000 })
                let client = try RawHTTPConnection(port: balancer.port)
                defer { client.close() }
                for i in 0..<20 {
                    client.send("GET /name HTTP/1.1\r\nHost: t\r\n\r\n")
                    #expect(client.readResponse()?.status == 200, "request \(i) while 3,000 clients are idle")
                }
                // Every idle connection is still open.
                var open = 0
                for fd in idle {
                    var byte: UInt8 = 0
                    let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                    if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { open += 1 }
                }
                #expect(open == 3_000)
                #expect(backends[0].server.statistics.connectionsAccepted == 1)
            }
        }
    }
}
