import Synchronization
import SystemSupport
import Testing
import TestSupport

@testable import MiniHTTP

#if canImport(Glibc)
import Glibc
#endif

/// Accepted connections go to the event loop with the fewest (`ConnectionSpreader`), not to
/// whichever loop the kernel woke: a burst that lands on one loop would leave the others idle.
struct ConnectionSpreadingTests {
    @Test func theSpreaderPicksTheLoopWithTheFewestAndCountsWhatItHandsOver() {
        let spreader = ConnectionSpreader(loops: 3)
        // Loop 0 accepts everything (as when it is the one the kernel wakes): the connections still go round.
        let destinations = (0..<6).map { _ in spreader.assign(acceptedBy: 0) }
        #expect(destinations == [0, 1, 2, 0, 1, 2])
        #expect(spreader.openPerLoop == [2, 2, 2])
        #expect(spreader.handOver(10, from: 0, to: 1))
        #expect(spreader.handOver(11, from: 0, to: 2))
        #expect(spreader.adopt(by: 1) == [10])
        #expect(spreader.adopt(by: 1) == [], "taken once")
        spreader.released(by: 2)
        spreader.released(by: 2)
        #expect(spreader.assign(acceptedBy: 0) == 2, "the loop that lost its connections gets the next")
        // A loop that ended takes nothing more: what waited in its inbox is returned for closing, and
        // a connection handed over later stays with (and is counted on) the loop that accepted it.
        #expect(spreader.end(2) == [11])
        let before = spreader.openPerLoop
        #expect(!spreader.handOver(12, from: 0, to: 2))
        #expect(spreader.openPerLoop == [before[0] + 1, before[1], before[2] - 1])
    }

    /// 20 connections to a server with two loops, each answered: 10 on each loop, and the
    /// handlers (run on the loops: `handlerThreads: 0`) ran on two threads.
    @Test func aServersConnectionsAreSplitEvenlyOverItsLoops() throws {
        let threads = Mutex<Set<UInt>>([])
        let responder: HTTPResponder = { _ in
            threads.withLock { _ = $0.insert(UInt(pthread_self())) }
            return HTTPResponse(status: 200, body: bytes("ok"))
        }
        try withServer(testConfiguration(handlerThreads: 0), responder: responder) { server in
            var connections: [RawHTTPConnection] = []
            for _ in 0..<20 {
                let connection = try RawHTTPConnection(port: server.port)
                connection.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(connection.readResponse()?.status == 200)
                connections.append(connection)
            }
            #expect(server.statistics.connectionsPerLoop == [10, 10])
            #expect(threads.withLock { $0.count } == 2, "both loops served requests")
            for connection in connections { connection.close() }
            #expect(waitUntil(timeout: 10) { server.statistics.connectionsPerLoop == [0, 0] }, "closed connections are released")
        }
    }
}
