import MiniHTTP
import Testing

@testable import Balancer

/// The exchange state machine on its own: events in, the exact actions out; no sockets, no clock.
@Suite("Balancer: the exchange state machine")
struct ProxyExchangeStateMachineTests {
    typealias Machine = ProxyExchangeStateMachine

    static let limits = Machine.Limits(
        replayBytes: 64, maxAttempts: 3, clientBodyTimeoutMillis: 30_000, backendResponseTimeoutMillis: 10_000,
        backendIdleTimeoutMillis: 20_000, queueTimeoutMillis: 5_000)
    var limits: Machine.Limits { Self.limits }

    /// The head as it would go upstream: 32 bytes, so that 32 more body bytes fill the 64-byte replay cap.
    static let headBytes = Array("GET / HTTP/1.1\r\nHost: t12345\r\n\r\n".utf8)

    func machine(
        _ method: String, headers: HTTPHeaders = [:], framing: HTTPRequestHead.BodyFraming = .none,
        version: HTTPVersion = .http1_1, keepAlive: Bool = true, expectsContinue: Bool = false, now: Int64 = 0
    ) -> Machine {
        let head = HTTPRequestHead(
            method: method, target: "/", version: version, headers: headers, keepAlive: keepAlive,
            bodyFraming: framing, expectsContinue: expectsContinue)
        return Machine(head: head, headBytes: Self.headBytes, limits: Self.limits, now: now)
    }

    /// A request whose body (if any) is complete and whose bytes reached the backend on the first attempt.
    func sentRequest(_ method: String, headers: HTTPHeaders = [:], version: HTTPVersion = .http1_1) -> Machine {
        var m = machine(method, headers: headers, version: version)
        #expect(m.requestEnded(limits: limits) == .none)
        #expect(m.nextAttempt(limits: limits) == .pickBackend(excluding: 0, isRetry: false))
        _ = m.attemptStarted()
        m.requestBytesWritten()
        return m
    }

    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Whether the backend is overdue at `now`, having last read and written at 0.
    func overdue(_ m: Machine, now: Int64, upstreamPending: Bool, clientHasRoom: Bool) -> Bool {
        m.backendOverdue(
            now: now, lastRead: 0, lastWrite: 0, upstreamPending: upstreamPending, clientHasRoom: clientHasRoom,
            limits: limits)
    }

    @Test func theHeadFillsHalfTheReplayCap() {
        #expect(Self.headBytes.count == 32)
    }

    // MARK: - Normal exchanges

    @Test func getAnswered200KeepsBothConnections() {
        var m = machine("GET")
        #expect(m.requestEnded(limits: limits) == .none)
        #expect(m.bodyDone)
        #expect(m.nextAttempt(limits: limits) == .pickBackend(excluding: 0, isRetry: false))
        let attempt = m.attemptStarted()
        #expect(!attempt.isRetry)
        #expect(!attempt.probesIdleConnection)  // a GET with its replay may find out on use
        m.requestBytesWritten()
        #expect(m.awaitsRequestSentTime(upstreamEmpty: true))
        m.requestSent(at: 7)
        #expect(m.requestSentAt == 7)

        let head = HTTPResponseHead(status: 200, reason: "OK", bodyFraming: .contentLength(2))
        #expect(
            m.responseHead(head, clientClosed: false, stopping: false)
                == .send(Self.bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")))
        #expect(m.phase == .streaming(.asIs))
        #expect(m.responseStarted)
        #expect(m.responseBody() == .send)
        #expect(
            m.responseEnded(connectionClean: true)
                == .finish(lastChunk: false, reuseBackend: true, keepClient: true))
        #expect(m.phase == .done)
    }

    @Test func theRequestSentTimeIsWantedOnceTheWholeRequestIsWritten() {
        var m = machine("POST", framing: .contentLength(4))
        #expect(!m.awaitsRequestSentTime(upstreamEmpty: true))  // body not read yet
        #expect(m.requestBody(Self.bytes("abcd"), limits: limits) == .sendUpstream(Self.bytes("abcd")))
        #expect(m.requestEnded(limits: limits) == .none)
        #expect(!m.awaitsRequestSentTime(upstreamEmpty: false))
        #expect(m.awaitsRequestSentTime(upstreamEmpty: true))
        m.requestSent(at: 3)
        #expect(!m.awaitsRequestSentTime(upstreamEmpty: true))
    }

    @Test func backendConnectionCloseClosesOnlyTheBackendConnection() {
        var m = sentRequest("GET")
        let head = HTTPResponseHead(
            status: 200, reason: "OK", headers: ["Connection": "close"], keepAlive: false,
            bodyFraming: .contentLength(0))
        #expect(
            m.responseHead(head, clientClosed: false, stopping: false)
                == .send(Self.bytes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
        #expect(
            m.responseEnded(connectionClean: true)
                == .finish(lastChunk: false, reuseBackend: false, keepClient: true))
    }

    @Test func clientConnectionCloseIsHonoured() {
        var m = machine("GET", keepAlive: false)
        _ = m.requestEnded(limits: limits)
        _ = m.attemptStarted()
        let head = HTTPResponseHead(status: 200, reason: "OK", bodyFraming: .contentLength(0))
        #expect(
            m.responseHead(head, clientClosed: false, stopping: false)
                == .send(Self.bytes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")))
        #expect(
            m.responseEnded(connectionClean: true)
                == .finish(lastChunk: false, reuseBackend: true, keepClient: false))
    }

    @Test func stoppingOrAClosedClientCloseTheClientAfterTheResponse() {
        for (clientClosed, stopping) in [(true, false), (false, true)] {
            var m = sentRequest("GET")
            let head = HTTPResponseHead(status: 204, reason: "No Content")
            #expect(
                m.responseHead(head, clientClosed: clientClosed, stopping: stopping)
                    == .send(Self.bytes("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")))
            #expect(
                m.responseEnded(connectionClean: false)
                    == .finish(lastChunk: false, reuseBackend: false, keepClient: false))
        }
    }

    @Test func chunkedResponsesAreRechunkedForHTTP11AndCloseDelimitedForHTTP10() {
        var m11 = sentRequest("GET")
        let chunked = HTTPResponseHead(status: 200, reason: "OK", bodyFraming: .chunked)
        #expect(
            m11.responseHead(chunked, clientClosed: false, stopping: false)
                == .send(Self.bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")))
        #expect(m11.responseBody() == .sendChunk)
        #expect(
            m11.responseEnded(connectionClean: true)
                == .finish(lastChunk: true, reuseBackend: true, keepClient: true))

        var m10 = sentRequest("GET", version: .http1_0)
        #expect(
            m10.responseHead(chunked, clientClosed: false, stopping: false)
                == .send(Self.bytes("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")))
        #expect(m10.phase == .streaming(.untilClose))
        #expect(m10.responseBody() == .send)
        #expect(
            m10.responseEnded(connectionClean: true)
                == .finish(lastChunk: false, reuseBackend: true, keepClient: false))
    }

    @Test func chunkedRequestBodiesAreRechunkedUpstream() {
        var m = machine("POST", framing: .chunked)
        #expect(m.hasBody)
        #expect(m.requestBody(Self.bytes("hello"), limits: limits) == .sendUpstream(Self.bytes("5\r\nhello\r\n")))
        #expect(m.requestBody([], limits: limits) == .sendUpstream([]))
        #expect(m.requestEnded(limits: limits) == .sendUpstream(Self.bytes("0\r\n\r\n")))
        #expect(m.replay == Self.headBytes + Self.bytes("5\r\nhello\r\n0\r\n\r\n"))
    }

    // MARK: - Retries

    @Test func connectFailureIsRetriedElsewhereForEveryMethod() {
        let requests: [(String, HTTPHeaders)] = [("GET", [:]), ("POST", ["Idempotency-Key": "k1"]), ("POST", [:])]
        for (method, headers) in requests {
            var m = machine(method, headers: headers, framing: method == "POST" ? .contentLength(0) : .none)
            _ = m.requestEnded(limits: limits)
            #expect(m.nextAttempt(limits: limits) == .pickBackend(excluding: 0, isRetry: false))
            _ = m.attemptStarted()
            #expect(!m.asksWhetherUnread(.connect, responseBytes: 0))
            #expect(
                m.backendFailed(.connect, backend: 1, reused: false, unread: false)
                    == .retry(resend: nil, backend: .down, unreadRetry: false), "\(method) \(headers)")
            #expect(m.nextAttempt(limits: limits) == .pickBackend(excluding: 0b10, isRetry: true))
            #expect(m.attemptStarted().isRetry)
        }
    }

    @Test func brokenAfterSendingIsRetriedForGETAndForPOSTWithIdempotencyKey() {
        let requests: [(String, HTTPHeaders)] = [("GET", [:]), ("POST", ["Idempotency-Key": "k1"]), ("PUT", [:])]
        for (method, headers) in requests {
            var m = sentRequest(method, headers: headers)
            #expect(m.retriable)
            #expect(m.asksWhetherUnread(.broken, responseBytes: 0))
            #expect(
                m.backendFailed(.broken, backend: 2, reused: false, unread: false)
                    == .retry(resend: Self.headBytes, backend: .down, unreadRetry: false), "\(method)")
            #expect(m.tried == 0b100)
            #expect(m.nextAttempt(limits: limits) == .pickBackend(excluding: 0b100, isRetry: true))
        }
    }

    @Test func postWithoutIdempotencyKeyIsNotRepeatedAfterItWasSent() {
        var m = sentRequest("POST")
        #expect(!m.retriable)
        #expect(m.asksWhetherUnread(.broken, responseBytes: 0))
        #expect(
            m.backendFailed(.broken, backend: 0, reused: false, unread: false)
                == .respond(.notRepeated, backend: .down))
        #expect(m.tried == 0)
        #expect(
            m.answer(clientClosed: false, stopping: false)
                == Machine.Answer(keepAlive: true, headOnly: false, version: .http1_1))
        #expect(ProxyErrorAnswer.notRepeated.status == 502)
        #expect(ProxyErrorAnswer.notRepeated.code == "bad_gateway")
    }

    @Test func postTheBackendProvablyDidNotReadIsSentAgain() {
        var m = sentRequest("POST")
        #expect(
            m.backendFailed(.broken, backend: 0, reused: true, unread: true)
                == .retry(resend: Self.headBytes, backend: .none, unreadRetry: true))
        #expect(m.tried == 0)  // a pooled connection's close says nothing against its backend
    }

    @Test func brokenBeforeAnyByteWasSentIsRetriedForAnyMethod() {
        var m = machine("POST")
        _ = m.requestEnded(limits: limits)
        _ = m.attemptStarted()
        #expect(!m.asksWhetherUnread(.broken, responseBytes: 0))
        #expect(
            m.backendFailed(.broken, backend: 0, reused: true, unread: false)
                == .retry(resend: nil, backend: .none, unreadRetry: false))
        _ = m.attemptStarted()
        #expect(
            m.backendFailed(.broken, backend: 1, reused: false, unread: false)
                == .retry(resend: nil, backend: .down, unreadRetry: false))
        #expect(m.tried == 0b10)
    }

    @Test func backendDyingMidResponseClosesTheClient() {
        var m = sentRequest("GET")
        let head = HTTPResponseHead(status: 200, reason: "OK", bodyFraming: .contentLength(100))
        _ = m.responseHead(head, clientClosed: false, stopping: false)
        #expect(!m.asksWhetherUnread(.broken, responseBytes: 50))
        #expect(m.backendFailed(.broken, backend: 0, reused: false, unread: false) == .closeClient(.failed))
        #expect(m.phase == .done)
        #expect(m.answer(clientClosed: false, stopping: false) == nil)  // no error answer after a response byte
    }

    @Test func attemptsRunOutThen503Or502() {
        var m = machine("GET")
        _ = m.requestEnded(limits: limits)
        for i in 0..<3 {
            #expect(m.nextAttempt(limits: limits) == .pickBackend(excluding: m.tried, isRetry: i > 0))
            _ = m.attemptStarted()
            #expect(
                m.backendFailed(.connect, backend: i, reused: false, unread: false)
                    == .retry(resend: nil, backend: .down, unreadRetry: false))
        }
        #expect(m.tried == 0b111)
        #expect(m.nextAttempt(limits: limits) == .respond(.noBackend))

        var sent = sentRequest("GET")
        _ = sent.backendFailed(.broken, backend: 0, reused: false, unread: false)
        #expect(sent.giveUpAnswer == .badGateway)
        #expect(ProxyErrorAnswer.noBackend.code == "no_backend")
        #expect(ProxyErrorAnswer.badGateway.status == 502)
        #expect(ProxyErrorAnswer.badGateway.code == "bad_gateway")
    }

    // MARK: - The replay copy

    @Test func bodyOverTheReplayCapIsNotRepeated() {
        var m = machine("PUT", framing: .contentLength(40))
        #expect(
            m.requestBody(Array(repeating: 65, count: 32), limits: limits)
                == .sendUpstream(Array(repeating: 65, count: 32)))
        #expect(m.replay?.count == 64)  // exactly the cap: still kept
        #expect(
            m.requestBody(Array(repeating: 66, count: 8), limits: limits)
                == .sendUpstream(Array(repeating: 66, count: 8)))
        #expect(m.replay == nil)
        _ = m.requestEnded(limits: limits)
        #expect(m.attemptStarted().probesIdleConnection)  // no replay: a pooled connection is checked first
        m.requestBytesWritten()
        #expect(
            m.backendFailed(.broken, backend: 0, reused: false, unread: true)
                == .respond(.notRepeated, backend: .down))
    }

    @Test func headOverTheReplayCapKeepsNoReplay() {
        let head = HTTPRequestHead(method: "GET", target: "/")
        var m = Machine(head: head, headBytes: Array(repeating: 0, count: 65), limits: limits, now: 0)
        #expect(m.replay == nil)
        _ = m.requestEnded(limits: limits)
        _ = m.attemptStarted()
        #expect(
            m.backendFailed(.timeout, backend: 0, reused: false, unread: false)
                == .respond(.backendTimeout, backend: .failed))
    }

    // MARK: - 100-continue and interim responses

    @Test func expectContinueIsAnsweredByTheBalancerUnlessTheRequestWasAnswered() {
        var routed = machine("POST", framing: .contentLength(5), expectsContinue: true)
        #expect(routed.expectsContinue)
        #expect(routed.sendsContinue)
        _ = routed.attemptStarted()
        #expect(routed.sendsContinue)

        var refused = machine("POST", framing: .contentLength(5), expectsContinue: true)
        var noAttempts = limits
        noAttempts.maxAttempts = 0
        #expect(refused.nextAttempt(limits: noAttempts) == .respond(.noBackend))
        #expect(
            refused.answer(clientClosed: false, stopping: false)
                == Machine.Answer(keepAlive: false, headOnly: false, version: .http1_1))
        #expect(!refused.sendsContinue)

        let noBody = machine("POST", framing: .contentLength(0), expectsContinue: true)
        #expect(!noBody.sendsContinue)
    }

    @Test func interimResponsesAreDroppedAndProtocolSwitchesRejected() {
        var m = sentRequest("POST")
        #expect(m.responseHead(HTTPResponseHead(status: 100), clientClosed: false, stopping: false) == .skip)
        #expect(m.phase == .skippingInterim)
        #expect(m.responseBody() == .drop)
        #expect(m.responseEnded(connectionClean: true) == .readOn)
        #expect(m.phase == .requesting)
        #expect(!m.responseStarted)
        let final = HTTPResponseHead(status: 201, reason: "Created", bodyFraming: .contentLength(0))
        #expect(
            m.responseHead(final, clientClosed: false, stopping: false)
                == .send(Self.bytes("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")))

        var upgrade = sentRequest("GET")
        #expect(
            upgrade.responseHead(HTTPResponseHead(status: 101), clientClosed: false, stopping: false)
                == .reject(HTTPParseError(status: 502, reason: "protocol switch not supported")))
        #expect(upgrade.invalidResponse() == .respond(.invalidResponse))
    }

    // MARK: - Timeouts

    @Test func safeRequestThatTimesOutIsAskedElsewhereThen504() {
        var m = sentRequest("GET")
        m.requestSent(at: 1_000)
        #expect(!overdue(m, now: 11_000, upstreamPending: false, clientHasRoom: true))
        #expect(overdue(m, now: 11_001, upstreamPending: false, clientHasRoom: true))
        #expect(
            m.backendFailed(.timeout, backend: 1, reused: true, unread: false)
                == .retry(resend: Self.headBytes, backend: .failed, unreadRetry: false))
        #expect(m.tried == 0b10)
        #expect(m.timedOut)
        #expect(m.giveUpAnswer == .gatewayTimeout)
        #expect(ProxyErrorAnswer.gatewayTimeout.status == 504)
        #expect(ProxyErrorAnswer.gatewayTimeout.code == "gateway_timeout")
    }

    @Test func unsafeRequestThatTimesOutGets504AndClosesIfItsBodyWasNotRead() {
        var m = sentRequest("PUT")
        #expect(
            m.backendFailed(.timeout, backend: 0, reused: false, unread: false)
                == .respond(.backendTimeout, backend: .failed))
        #expect(m.answer(clientClosed: false, stopping: false)?.keepAlive == true)

        var unfinished = machine("GET", framing: .contentLength(10))
        _ = unfinished.attemptStarted()
        #expect(
            unfinished.backendFailed(.timeout, backend: 0, reused: false, unread: false)
                == .respond(.backendTimeout, backend: .failed))
        #expect(!unfinished.clientKeepAlive)
        #expect(ProxyErrorAnswer.backendTimeout.status == 504)
        #expect(ProxyErrorAnswer.backendTimeout.code == "gateway_timeout")
    }

    @Test func backendThatTakesNoRequestBytesOrSendsNoResponseBytesIsOverdue() {
        var m = sentRequest("GET")
        #expect(!overdue(m, now: 20_000, upstreamPending: true, clientHasRoom: true))
        #expect(overdue(m, now: 20_001, upstreamPending: true, clientHasRoom: true))
        #expect(!overdue(m, now: 20_001, upstreamPending: false, clientHasRoom: true))
        let head = HTTPResponseHead(status: 200, bodyFraming: .untilClose)
        _ = m.responseHead(head, clientClosed: false, stopping: false)
        #expect(overdue(m, now: 20_001, upstreamPending: false, clientHasRoom: true))
        #expect(!overdue(m, now: 20_001, upstreamPending: false, clientHasRoom: false))
        #expect(m.backendFailed(.timeout, backend: 0, reused: false, unread: false) == .closeClient(.failed))
    }

    @Test func slowBodyGets408NotCountingTimeTheBackendHeldItUp() {
        var m = machine("POST", framing: .contentLength(10), now: 1_000)
        #expect(m.bodyDeadline(now: 31_000, limits: limits) == nil)
        #expect(m.bodyHoldChanges(heldUp: true))
        m.bodyHeldUp(true, now: 2_000)
        #expect(!m.bodyHoldChanges(heldUp: true))
        #expect(m.bodyDeadline(now: 100_000, limits: limits) == nil)  // never while held up
        #expect(m.bodyHoldChanges(heldUp: false))
        m.bodyHeldUp(false, now: 12_000)
        #expect(m.bodyDeadline(now: 41_000, limits: limits) == nil)
        #expect(m.bodyDeadline(now: 41_001, limits: limits) == .respond(.bodyTimeout))
        #expect(
            m.answer(clientClosed: false, stopping: false)
                == Machine.Answer(keepAlive: false, headOnly: false, version: .http1_1))
        #expect(ProxyErrorAnswer.bodyTimeout.status == 408)
        #expect(ProxyErrorAnswer.bodyTimeout.code == "request_timeout")

        var started = machine("POST", framing: .contentLength(10))
        _ = started.attemptStarted()
        let head = HTTPResponseHead(status: 200, bodyFraming: .contentLength(0))
        _ = started.responseHead(head, clientClosed: false, stopping: false)
        #expect(started.bodyDeadline(now: 30_001, limits: limits) == .closeClient)
    }

    @Test func queuedRequestGets503WithRetryAfterWhenItWaitedTooLong() {
        var m = machine("GET")
        m.enqueued(now: 100)
        m.enqueued(now: 3_000)  // the first wait counts
        #expect(m.queueTurn(now: 5_100, limits: limits) == .tryAgain)
        #expect(m.queueTurn(now: 5_101, limits: limits) == .respond(.backendsBusy))
        #expect(ProxyErrorAnswer.backendsBusy.status == 503)
        #expect(ProxyErrorAnswer.backendsBusy.retryAfter == 1)
        #expect(ProxyErrorAnswer.backendsBusy.response.headers["Retry-After"] == "1")
    }

    // MARK: - Answers of the balancer's own

    @Test func answersKeepTheClientOnlyForACompleteRequestAndAnswerHEADWithoutBody() {
        var head = machine("HEAD")
        _ = head.requestEnded(limits: limits)
        #expect(
            head.answer(clientClosed: false, stopping: false)
                == Machine.Answer(keepAlive: true, headOnly: true, version: .http1_1))
        #expect(head.answer(clientClosed: false, stopping: false) == nil)  // answered once

        var closed = machine("GET", version: .http1_0)
        _ = closed.requestEnded(limits: limits)
        #expect(
            closed.answer(clientClosed: true, stopping: false)
                == Machine.Answer(keepAlive: false, headOnly: false, version: .http1_0))

        var invalid = machine("POST", framing: .chunked)
        let error = HTTPParseError(status: 413, reason: "request body exceeds the limit")
        #expect(invalid.requestInvalid(error) == .respond(.badRequest(error)))
        #expect(!invalid.clientKeepAlive)
        #expect(ProxyErrorAnswer.badRequest(error).code == "body_too_large")
        #expect(ProxyErrorAnswer.badRequest(error).status == 413)

        var stalled = machine("POST", framing: .contentLength(3))
        #expect(stalled.requestBodyStalled(clientClosed: false) == .none)
        #expect(stalled.requestBodyStalled(clientClosed: true) == .closeClient)
    }
}
