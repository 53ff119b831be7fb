#if canImport(Glibc)
import Glibc
#endif
import Balancer
import Foundation
import MiniHTTP
import SystemSupport
import TestSupport
import Testing

/// A node process stopped with SIGTERM (`--drain-delay-ms`) behind the balancer: a lame duck first.
@Suite("Node process: the lame duck of a graceful stop", .serialized, .tags(.integration))
struct LameDuckProcessTests {
    func startNode(_ name: String, drainDelayMillis: Int) throws -> (ChildProcess, Int) {
        try ChildProcess.sessionClusterNode(
            id: name, arguments: ["--log-level", "info", "--drain-delay-ms", "\(drainDelayMillis)"])
    }

    @Test func underSIGTERMHealthTurns503BeforeAnyConnectionCloses() throws {
        let (node, port) = try startNode("lame-1", drainDelayMillis: 60_000)
        defer { _ = node.stop(signal: SIGKILL, timeout: 2) }
        let kept = try RawHTTPConnection(port: port)  // a balancer's pooled connection
        defer { kept.close() }
        kept.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(kept.readResponse()?.status == 200)

        node.send(SIGTERM)
        #expect(waitUntil(timeout: 5) { (try? get(port, "/healthz"))??.status == 503 }, "still accepting, /healthz says 503")
        let health = try #require(try get(port, "/healthz"))
        #expect(health.bodyText.contains("\"draining\""))
        var byte: UInt8 = 0
        #expect(recv(kept.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) < 0 && errno == EAGAIN, "the idle kept-alive connection is still open")

        // A request on it is served, and closes it (the client learns it from the response).
        kept.send("POST /api/counter HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        let answer = try #require(kept.readResponse())
        #expect(answer.status == 200)
        #expect(answer.header("Connection") == "close")
        #expect(kept.waitForClose())

        // With no connection left, the node stops without waiting out its 60 s delay (20 s: a
        // third of it, and far more than a loaded machine needs to stop a node).
        #expect(waitUntil(timeout: 20) { !node.isRunning }, "\(node.output)")
        #expect(node.exit == .exited(0))
        #expect(node.output.contains("drained"))
    }

    @Test func theDelayEndsTheLameDuckWhenAClientKeepsItsConnection() throws {
        let (node, port) = try startNode("lame-2", drainDelayMillis: 700)
        defer { _ = node.stop(signal: SIGKILL, timeout: 2) }
        let kept = try RawHTTPConnection(port: port)
        defer { kept.close() }
        kept.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        #expect(kept.readResponse()?.status == 200)
        node.send(SIGTERM)
        #expect(kept.waitForClose(timeoutMillis: 5_000), "closed once the delay passed")
        #expect(waitUntil(timeout: 5) { !node.isRunning })
        #expect(node.exit == .exited(0))
    }

    /// The whole chain: POSTs without Idempotency-Key through the balancer while one of two nodes
    /// restarts gracefully. Every one is answered 200 (none was lost or repeated by a retry).
    @Test func aGracefulRestartBehindTheBalancerCostsNoRequest() throws {
        var nodes = [try startNode("rr-1", drainDelayMillis: 2_000), try startNode("rr-2", drainDelayMillis: 2_000)]
        defer { for (node, _) in nodes { _ = node.stop(signal: SIGKILL, timeout: 2) } }
        var configuration = testBalancerConfiguration(
            backends: nodes.enumerated().map { BackendConfiguration(name: "n\($0.offset)", host: "127.0.0.1", port: $0.element.1) })
        configuration.healthCheck = HealthCheckConfiguration(intervalMillis: 100, timeoutMillis: 200, rise: 2, fall: 2)
        try withBalancer(configuration) { balancer in
            let stop = Shared(false)
            let results = Shared([Int: Int]())
            let clients = startThreads(16) { _ in
                guard let client = try? RawHTTPConnection(port: balancer.port) else { return }
                var statuses: [Int: Int] = [:]
                while !stop.value {
                    client.send("POST /api/counter HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                    statuses[client.readResponse()?.status ?? 0, default: 0] += 1
                }
                results.update { for (k, v) in statuses { $0[k, default: 0] += v } }
            }
            usleep(500_000)
            let (first, port) = nodes[0]
            first.send(SIGTERM)
            #expect(waitUntil(timeout: 10) { !first.isRunning }, "\(first.output)")
            // Started again on the same port, as a deploy does.
            let (again, _) = try ChildProcess.sessionClusterNode(id: "rr-1", port: port, arguments: ["--drain-delay-ms", "2000"])
            nodes.append((again, port))
            #expect(waitUntil(timeout: 10) { balancer.backends[0].health == "up" && (try? get(port, "/healthz"))??.status == 200 })
            usleep(500_000)
            stop.value = true
            clients.wait()
            let statuses = results.value
            #expect(statuses.keys.sorted() == [200], "every POST answered 200: \(statuses)")
            #expect(statuses[200, default: 0] > 100, "\(statuses)")
        }
    }
}
