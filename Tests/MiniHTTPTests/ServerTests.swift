#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing

@testable import MiniHTTP
import SystemSupport
import TestSupport

@Suite("HTTPServer over loopback")
struct ServerTests {
    @Test func keepAliveConnectionServesTwoRequests() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            #expect(client.send(getRequest("/a")))
            let first = try #require(client.readResponse())
            #expect(first.statusLine == "HTTP/1.1 200 OK")
            #expect(first.bodyText == "GET /a\n")
            #expect(first.header("Content-Length") == "7")
            #expect(first.header("Connection") == nil)

            #expect(client.send(getRequest("/b?x=1")))
            let second = try #require(client.readResponse())
            #expect(second.status == 200)
            #expect(second.bodyText == "GET /b?x=1\n")
            #expect(server.statistics.requests == 2)
            #expect(server.statistics.connectionsAccepted == 1, "both requests used one connection")
        }
    }

    @Test func requestBodiesReachTheHandler() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send("POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            #expect(client.readResponse()?.bodyText == "POST /cl\nhello")
            client.send("PUT /ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n")
            #expect(client.readResponse()?.bodyText == "PUT /ch\nabcde")
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(
                getRequest("/1") + "POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz" + getRequest("/3")
                    + getRequest("/4", extraHeaders: "Connection: close\r\n"))
            let bodies = (0..<4).map { _ in client.readResponse()?.bodyText }
            #expect(bodies == ["GET /1\n", "POST /2\nxyz", "GET /3\n", "GET /4\n"])
            #expect(client.waitForClose(), "Connection: close on the last request closes the connection")
        }
    }

    @Test func pipelinedRequestSplitAcrossWrites() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/1") + "GET /2 HTTP/1.1\r\nHo")
            #expect(client.readResponse()?.bodyText == "GET /1\n")
            usleep(20_000)
            client.send("st: t\r\n\r\n")
            #expect(client.readResponse()?.bodyText == "GET /2\n")
        }
    }

    @Test func headResponseHasHeadersButNoBody() throws {
        var router = Router()
        router.get("/doc") { _ in .text("twelve bytes") }
        try withServer(responder: router.responder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send("HEAD /doc HTTP/1.1\r\nHost: t\r\n\r\n")
            let head = try #require(client.readResponse(headOnly: true))
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == "12", "HEAD reports the length GET would send")
            // If a body had been sent, it would be read as the start of the next response.
            client.send(getRequest("/doc"))
            let get = try #require(client.readResponse())
            #expect(get.statusLine == "HTTP/1.1 200 OK")
            #expect(get.bodyText == "twelve bytes")
        }
    }

    @Test func http10ClosesUnlessKeepAliveIsAsked() throws {
        try withServer(responder: echoResponder) { server in
            let plain = try RawHTTPConnection(port: server.port)
            defer { plain.close() }
            plain.send("GET /old HTTP/1.0\r\n\r\n")
            let response = try #require(plain.readResponse())
            #expect(response.statusLine == "HTTP/1.0 200 OK")
            #expect(response.header("Connection") == "close")
            #expect(plain.waitForClose())

            let kept = try RawHTTPConnection(port: server.port)
            defer { kept.close() }
            kept.send("GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            #expect(kept.readResponse()?.header("Connection") == "keep-alive")
            kept.send("GET /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            #expect(kept.readResponse()?.bodyText == "GET /2\n")
        }
    }

    @Test func connectionCloseIsHonored() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/bye", extraHeaders: "Connection: close\r\n"))
            let response = try #require(client.readResponse())
            #expect(response.status == 200)
            #expect(response.header("Connection") == "close")
            #expect(client.waitForClose())
        }
    }

    @Test func handlerErrorsAreMappedAndConnectionSurvives() throws {
        struct Boom: Error {}
        var router = Router()
        router.get("/teapot") { _ in throw HTTPError(status: 418, code: "teapot", message: "short and stout") }
        router.get("/boom") { _ in throw Boom() }
        try withServer(responder: router.responder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/teapot"))
            let teapot = try #require(client.readResponse())
            #expect(teapot.status == 418)
            #expect(teapot.bodyText == #"{"error":"teapot","message":"short and stout"}"#)
            client.send(getRequest("/boom"))
            #expect(client.readResponse()?.status == 500)
            client.send("POST /teapot HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            let notAllowed = try #require(client.readResponse())
            #expect(notAllowed.status == 405)
            #expect(notAllowed.header("Allow") == "GET, HEAD")
            client.send(getRequest("/nowhere"))
            #expect(client.readResponse()?.status == 404)
        }
    }

    @Test func malformedRequestsGetTheirStatusAndAClosedConnection() throws {
        let configuration = testConfiguration(limits: MalformedCase.limits)
        try withServer(configuration, responder: echoResponder) { server in
            for testCase in MalformedCase.all {
                let client = try RawHTTPConnection(port: server.port)
                defer { client.close() }
                client.send(testCase.raw)
                guard let response = client.readResponse() else {
                    Issue.record("\(testCase): no response")
                    continue
                }
                #expect(
                    response.statusLine == "HTTP/1.1 \(testCase.status) \(reasonPhrase(testCase.status))",
                    "\(testCase)")
                #expect(response.header("Connection") == "close", "\(testCase)")
                #expect(response.header("Content-Type") == "application/json", "\(testCase)")
                #expect(client.waitForClose(), "\(testCase): connection must be closed after the error")
            }
            #expect(server.statistics.parseErrors == MalformedCase.all.count)
            #expect(server.statistics.requests == 0, "no malformed request reached the handler")
        }
    }

    @Test func errorAfterAValidRequestClosesTheConnection() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/ok") + "GET / HTTP/1.1\r\nHost : t\r\n\r\n" + getRequest("/never"))
            #expect(client.readResponse()?.bodyText == "GET /ok\n")
            #expect(client.readResponse()?.status == 400)
            #expect(client.waitForClose())
            #expect(client.unconsumed.isEmpty, "nothing is answered after the error")
        }
    }

    @Test func expectContinueIsAnsweredBeforeTheBodyIsSent() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send("POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            let interim = try #require(client.readResponse(timeoutMillis: 2_000), "no 100 Continue before the body")
            #expect(interim.statusLine == "HTTP/1.1 100 Continue")
            client.send("hello")
            let final = try #require(client.readResponse())
            #expect(final.status == 200)
            #expect(final.bodyText == "POST /up\nhello")

            // With the body already sent, no interim response is needed.
            client.send("POST /up2 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")
            let direct = try #require(client.readResponse())
            #expect(direct.status == 200)
            #expect(direct.bodyText == "POST /up2\nhi")
        }
    }

    @Test func expectContinueWithTooLargeBodyGets413Instead() throws {
        try withServer(testConfiguration(limits: HTTPParserLimits(maxBodyBytes: 10)), responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send("POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
            let response = try #require(client.readResponse())
            #expect(response.status == 413)
            #expect(client.waitForClose())
        }
    }

    // The timeout tests below configure 300 ms and wait up to 3 s (10x) for the timeout to
    // fire: a loaded machine only delays it, and the wait bounds a broken server, it measures
    // nothing. What they check is the behaviour (408 or a silent close, the counter), and that
    // the timeout did not fire before its time: the client's clock starts before the server's,
    // so the elapsed time it sees can only be longer than the configured value, never shorter.

    @Test func headerTimeoutAnswers408AndCloses() throws {
        try withServer(testConfiguration(headerTimeoutMillis: 300), responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let start = monotonicMillis()
            client.send("GET / HTTP/1.1\r\nHo")
            let response = try #require(client.readResponse(timeoutMillis: 3_000), "no 408 within 10x the header timeout")
            let elapsed = monotonicMillis() - start
            #expect(response.status == 408)
            #expect(response.header("Connection") == "close")
            #expect(elapsed >= 300, "408 after \(elapsed) ms, before the 300 ms header timeout")
            #expect(client.waitForClose())
            #expect(server.statistics.timeouts == 1)
        }
    }

    @Test func bodyTimeoutAnswers408AndCloses() throws {
        try withServer(testConfiguration(bodyTimeoutMillis: 300), responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let start = monotonicMillis()
            client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            let response = try #require(client.readResponse(timeoutMillis: 3_000), "no 408 within 10x the body timeout")
            let elapsed = monotonicMillis() - start
            #expect(response.status == 408)
            #expect(elapsed >= 300, "408 after \(elapsed) ms, before the 300 ms body timeout")
            #expect(client.waitForClose())
            #expect(server.statistics.timeouts == 1)
        }
    }

    @Test func idleKeepAliveConnectionIsClosedSilently() throws {
        try withServer(testConfiguration(idleTimeoutMillis: 300), responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let start = monotonicMillis()  // before the server's last write, which starts the idle time
            client.send(getRequest("/"))
            #expect(client.readResponse()?.status == 200)
            #expect(client.waitForClose(timeoutMillis: 3_000), "idle connection not closed within 10x the idle timeout")
            let elapsed = monotonicMillis() - start
            #expect(elapsed >= 300, "closed after \(elapsed) ms, before the 300 ms idle timeout")
            #expect(client.unconsumed.isEmpty, "no 408 for a connection that was between requests")

            // A connection that never sends anything is idle too.
            let silent = try RawHTTPConnection(port: server.port)
            defer { silent.close() }
            #expect(silent.waitForClose(timeoutMillis: 3_000))
            #expect(silent.unconsumed.isEmpty)
        }
    }

    /// A client that asks for a large response and never reads it is disconnected once
    /// nothing could be written for `writeTimeoutMillis`: it holds neither the connection nor
    /// the unsent bytes. The idle timeout is far longer, so only the write timeout can close it;
    /// the 10 s wait (33x the 300 ms write timeout) only bounds a broken server.
    @Test func aClientThatNeverReadsIsCutOffAtTheWriteTimeout() throws {
        let size = 32 << 20  // far more than the socket buffers of both ends hold
        let big = [UInt8](repeating: UInt8(ascii: "b"), count: size)
        let configuration = testConfiguration(idleTimeoutMillis: 120_000, writeTimeoutMillis: 300)
        try withServer(configuration, responder: { _ in HTTPResponse(status: 200, body: big) }) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            #expect(client.send(getRequest("/big")))
            #expect(
                poll(timeoutMillis: 10_000) { server.statistics.timeouts == 1 },
                "a client that reads nothing still holds its connection 33x the write timeout later")
            // What the kernel had buffered (a receive buffer that never grows, as nothing is read,
            // and a send buffer of at most 4 MiB) still arrives, then the close: never the whole body.
            #expect(client.waitForClose(timeoutMillis: 10_000), "the connection was not closed")
            #expect(client.unconsumed.count < size, "the whole response was delivered to a client that never read")
            #expect(server.statistics.requests == 1)
        }
    }

    /// A client that pipelines many requests and reads nothing gets no more answers made than
    /// the socket buffers hold: once its output is backed up, the server stops reading and parsing
    /// that connection (the handler is not run for the rest, nothing more is buffered), until the
    /// write timeout ends it. The 10 s wait (33x the 300 ms write timeout) only bounds a broken server.
    @Test func aPipeliningClientThatNeverReadsGetsNoMoreAnswersThanTheBuffersHold() throws {
        let size = 2 << 20
        let big = [UInt8](repeating: UInt8(ascii: "b"), count: size)
        // Only the write timeout may end it: every other timeout is far longer than the wait.
        let configuration = testConfiguration(
            headerTimeoutMillis: 120_000, bodyTimeoutMillis: 120_000, idleTimeoutMillis: 120_000, writeTimeoutMillis: 300)
        try withServer(configuration, responder: { _ in HTTPResponse(status: 200, body: big) }) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let sent = 64
            #expect(client.send(String(repeating: getRequest("/big"), count: sent)))
            #expect(poll(timeoutMillis: 10_000) { server.statistics.timeouts == 1 }, "the write timeout never ended it")
            // The kernel's buffers (a few MiB here) hold a few 2 MiB answers at most.
            let handled = server.statistics.requests
            #expect(handled >= 1 && handled < sent / 4, "\(handled) of \(sent) pipelined requests handled for a client that reads nothing")
        }
    }

    /// Pipelined requests whose answers back up (the client reads nothing for a while) are all
    /// answered, in order, once the client reads: the requests already buffered are parsed when
    /// the output drains, not left waiting for bytes that will never come.
    @Test func pipelinedRequestsBehindBackedUpAnswersAreAllAnsweredInOrder() throws {
        let size = 2 << 20  // 8 answers of 2 MiB: far more than the socket buffers hold
        let configuration = testConfiguration(writeTimeoutMillis: 60_000)
        try withServer(configuration, responder: { request in
            HTTPResponse(status: 200, headers: ["X-Path": request.path], body: [UInt8](repeating: UInt8(ascii: "p"), count: size))
        }) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let paths = (1...8).map { "/\($0)" }
            #expect(client.send(paths.map { getRequest($0) }.joined()))
            // Reads nothing until the server has answered one and its output is backed up.
            try #require(poll(timeoutMillis: 10_000) { server.statistics.requests >= 1 })
            usleep(300_000)
            #expect(server.statistics.requests < paths.count, "nothing backed up: the test proves nothing")
            for path in paths {
                let response = try #require(client.readResponse(timeoutMillis: 20_000), "no answer for \(path)")
                #expect(response.status == 200 && response.header("X-Path") == path, "\(response.statusLine) for \(path)")
                #expect(response.body.count == size)
            }
        }
    }

    @Test func gracefulShutdownFinishesInFlightRequestThenRefusesConnections() throws {
        let entered = Counter()
        let finished = Counter()
        let server = HTTPServer(configuration: testConfiguration(), logger: quietLogger()) { request in
            if request.path == "/slow" {
                entered.increment()
                usleep(300_000)
                finished.increment()
                return .text("slow done")
            }
            return .text("fast")
        }
        try server.start()
        defer { server.shutdown() }
        let port = server.port

        let idle = try RawHTTPConnection(port: port)
        defer { idle.close() }
        idle.send(getRequest("/fast"))
        #expect(idle.readResponse()?.bodyText == "fast")

        let busy = try RawHTTPConnection(port: port)
        defer { busy.close() }
        busy.send(getRequest("/slow"))
        try #require(poll(timeoutMillis: 3_000) { entered.current == 1 }, "the slow handler never started")

        let job = BackgroundJob { server.shutdown() }
        #expect(job.wait(timeoutMillis: 5_000), "shutdown did not return")
        #expect(finished.current == 1, "shutdown returned before the in-flight request finished")

        let response = try #require(busy.readResponse(), "the in-flight request lost its response")
        #expect(response.status == 200)
        #expect(response.bodyText == "slow done")
        #expect(response.header("Connection") == "close", "no keep-alive while stopping")
        #expect(busy.waitForClose())
        #expect(idle.waitForClose(), "idle keep-alive connections are closed at shutdown")
        #expect(idle.unconsumed.isEmpty)

        do {
            let late = try Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 1_000)
            close(late)
            Issue.record("connect after shutdown succeeded")
        } catch let error as SocketError {
            #expect(error.errno == ECONNREFUSED, "\(error)")
        }
    }

    @Test func queuedRequestAlreadySentIsStillAnsweredAtShutdown() throws {
        let entered = Counter()
        let server = HTTPServer(configuration: testConfiguration(handlerThreads: 1), logger: quietLogger()) { request in
            if request.path == "/slow" {
                entered.increment()
                usleep(300_000)
            }
            return .text(request.path)
        }
        try server.start()
        defer { server.shutdown() }
        let busy = try RawHTTPConnection(port: server.port)
        defer { busy.close() }
        busy.send(getRequest("/slow"))
        try #require(poll(timeoutMillis: 3_000) { entered.current == 1 }, "the slow handler never started")
        // The only thread is busy: this connection waits in the queue with its request sent.
        let queued = try RawHTTPConnection(port: server.port)
        defer { queued.close() }
        queued.send(getRequest("/queued"))
        usleep(50_000)
        let job = BackgroundJob { server.shutdown() }
        #expect(job.wait(timeoutMillis: 5_000), "shutdown did not return")
        #expect(busy.readResponse()?.bodyText == "/slow")
        let answer = try #require(queued.readResponse(), "a request accepted before shutdown lost its answer")
        #expect(answer.bodyText == "/queued")
        #expect(answer.header("Connection") == "close")
    }

    @Test func connectionsBeyondTheLimitGet503() throws {
        let configuration = testConfiguration(maxConnections: 2)
        try withServer(configuration, responder: echoResponder) { server in
            let a = try RawHTTPConnection(port: server.port)
            defer { a.close() }
            a.send(getRequest("/a"))
            #expect(a.readResponse()?.bodyText == "GET /a\n")
            let b = try RawHTTPConnection(port: server.port)
            defer { b.close() }
            b.send(getRequest("/b"))
            #expect(b.readResponse()?.bodyText == "GET /b\n")
            // C finds no room.
            let c = try RawHTTPConnection(port: server.port)
            defer { c.close() }
            let rejected = try #require(c.readResponse())
            #expect(rejected.statusLine == "HTTP/1.1 503 Service Unavailable")
            #expect(rejected.header("Connection") == "close")
            #expect(rejected.bodyText.contains("server_busy"))
            #expect(c.waitForClose())
            #expect(server.statistics.connectionsRejected == 1)

            // Once A leaves, there is room again.
            a.close()
            #expect(poll(timeoutMillis: 2_000) {
                guard let d = try? RawHTTPConnection(port: server.port) else { return false }
                defer { d.close() }
                d.send(getRequest("/d"))
                return d.readResponse()?.bodyText == "GET /d\n"
            })
        }
    }

    /// A client that resets its connection while its handler runs must not make the
    /// loop spin on the hang-up (epoll reports it whatever the interest).
    @Test func aResetDuringAHandlerDoesNotSpinTheLoop() throws {
        let handlerStarted = Counter()
        try withServer(testConfiguration(handlerThreads: 1), responder: { request in
            if request.path == "/slow" {
                handlerStarted.increment()
                usleep(600_000)
            }
            return HTTPResponse(status: 200, body: bytes("ok"))
        }) { server in
            let client = try RawHTTPConnection(port: server.port)
            #expect(client.send(getRequest("/slow")))
            #expect(waitUntil(timeout: 5) { handlerStarted.current == 1 })
            var reset = linger(l_onoff: 1, l_linger: 0)
            setsockopt(client.fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
            let before = server.statistics.connectionEvents
            client.close()  // RST while the handler sleeps
            usleep(400_000)
            let during = server.statistics.connectionEvents - before
            #expect(during < 50, "\(during) readiness events in 400 ms for one reset connection")
            let next = try RawHTTPConnection(port: server.port)
            defer { next.close() }
            #expect(next.send(getRequest("/after")))
            #expect(next.readResponse()?.bodyText == "ok", "the server still answers")
        }
    }

    @Test func handlersOnTheEventLoopServePipelinedRequestsInOrder() throws {
        try withServer(testConfiguration(handlerThreads: 0), responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            client.send(getRequest("/1") + getRequest("/2") + getRequest("/3"))
            #expect(client.readResponse()?.bodyText == "GET /1\n")
            #expect(client.readResponse()?.bodyText == "GET /2\n")
            #expect(client.readResponse()?.bodyText == "GET /3\n")
        }
    }
}
