#if canImport(Glibc)
import Glibc
#endif
import Testing

@testable import MiniHTTP
import SystemSupport
import TestSupport

/// Regression tests for bugs found in `HTTPServer` while writing this suite
/// (all present at commit 9903f6a). Each comment describes the bug as it was.
@Suite("HTTPServer: regressions")
struct ServerRegressionTests {
    /// HTTPServer.swift, `serve`: when data arrives at a message boundary the
    /// header deadline is set from `now`, taken *before* the idle wait began,
    /// so an idle period longer than headerTimeoutMillis leaves a deadline in
    /// the past, and a head that arrives in two segments gets 408 at once.
    @Test
    func headerDeadlineStartsAtFirstByteNotAtStartOfIdleWait() throws {
        // The head's two pieces come 50 ms apart, 20x within the 1 s header timeout: a loaded
        // machine delaying the second piece cannot make a correct server answer 408.
        try withServer(testConfiguration(headerTimeoutMillis: 1_000, idleTimeoutMillis: 20_000), responder: echoResponder) {
            server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/first"))
            #expect(client.readResponse()?.status == 200)
            usleep(1_500_000)  // idle, longer than the header timeout but well within the idle timeout
            client.send("GET /second HTTP/1.1\r\n")
            usleep(50_000)
            client.send("Host: t\r\n\r\n")  // the head is complete 50 ms after its first byte
            let response = try #require(client.readResponse())
            #expect(response.status == 200, "got \(response.statusLine)")
            #expect(response.bodyText == "GET /second\n")
        }
    }

    /// HTTPServer.swift, `serve`: after a request ends with pipelined bytes of
    /// the next request already buffered, `headDeadline` is not reset, so the
    /// next head inherits the deadline of the previous request's first byte.
    /// If the previous handler took longer than headerTimeoutMillis, the next
    /// request gets 408 without any wait even though its head arrives promptly.
    @Test
    func pipelinedHeadAfterSlowHandlerGetsItsOwnDeadline() throws {
        let slow: HTTPResponder = { request in
            if request.path == "/slow" { usleep(1_500_000) }  // longer than the header timeout
            return .text(request.path)
        }
        // The second head's two pieces come 50 ms apart, 20x within the 1 s header timeout.
        try withServer(testConfiguration(headerTimeoutMillis: 1_000), responder: slow) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/slow") + "GET /fast HTTP/1.1\r\n")
            usleep(50_000)
            client.send("Host: t\r\n\r\n")  // complete long before the slow handler returns
            #expect(client.readResponse()?.bodyText == "/slow")
            let second = try #require(client.readResponse())
            #expect(second.status == 200, "got \(second.statusLine)")
            #expect(second.bodyText == "/fast")
        }
    }

    /// HTTPServer.swift: `shutdownGraceMillis` is never read. `shutdown()`
    /// waits for every connection thread, and a connection in the middle of a
    /// request (here: a stalled upload) only ends at its body timeout, which
    /// is re-armed by every byte, so a slow client can hold shutdown forever.
    @Test
    func shutdownIsBoundedByTheGracePeriod() throws {
        // The body timeout (60 s) is far longer than the wait below, so only the grace period
        // can end the stalled upload in time; the wait (10 s, 33x the 300 ms grace) only
        // bounds a broken server.
        var configuration = testConfiguration(bodyTimeoutMillis: 60_000)
        configuration.shutdownGraceMillis = 300
        let server = HTTPServer(configuration: configuration, logger: quietLogger(), responder: echoResponder)
        try server.start()
        defer { server.shutdown() }
        let client = try RawHTTPConnection(port: server.port)
        defer { client.close() }  // runs first: if the test failed, this ends the upload and shutdown
        client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npartial")
        try #require(poll(timeoutMillis: 10_000) { server.statistics.bodyBufferBytes > 0 }, "the upload never started")
        let job = BackgroundJob { server.shutdown() }
        #expect(job.wait(timeoutMillis: 10_000), "shutdown still running 33x the 300 ms grace period later")
        #expect(client.waitForClose(), "the stalled connection is cut off")
    }

    /// HTTPServer.swift, `shutdown()`: on a server that was never started (or
    /// whose `start()` threw) it writes to fd -1 and then waits forever on the
    /// `stopped` semaphore, which only the (never started) threads signal.
    @Test
    func shutdownWithoutStartReturns() {
        let server = HTTPServer(configuration: testConfiguration(), logger: quietLogger(), responder: echoResponder)
        let job = BackgroundJob { server.shutdown() }
        #expect(job.wait(timeoutMillis: 10_000), "shutdown() of a server that never started hangs")
    }
}
