#if canImport(Glibc)
import Glibc
#endif
import Logging
import MiniHTTP
import SystemSupport

// Exchanges on the loop: the parsers' events go to each exchange's state machine
// (`ProxyExchangeStateMachine`), and its actions are performed here: bytes moved,
// backends picked and connected, answers written, connections closed.
extension ProxyLoop {
    // MARK: - Progress

    /// Advances a client connection and its exchange as far as the buffers allow.
    func progress(_ c: ClientConnection) {
        var reads = 8  // per turn, for fairness: the rest waits for the next turn of the loop
        var moved = true
        while moved && c.isOpen {
            moved = false
            if reads > 0, let b = c.exchange?.backend, b.readable, canRead(b) {
                reads -= 1
                readBackend(b)
                moved = true
            }
            if c.isOpen, reads > 0, c.readable, canRead(c) {
                reads -= 1
                readClient(c)
                moved = true
            }
            if c.isOpen, let b = c.exchange?.backend, pumpResponse(b) { moved = true }
            if c.isOpen, pumpRequest(c) { moved = true }
            if c.isOpen, let b = c.exchange?.backend, flushBackend(b) { moved = true }
            if c.isOpen, flushClient(c) { moved = true }
        }
        guard c.isOpen else { return }
        if c.hungUp && !canRead(c) {
            // Read to the end after a hang-up (reported once, edge-triggered): nothing can reach the peer any more.
            abortClient(c)
            return
        }
        if let ex = c.exchange {
            let heldUp = ex.upstream.pending >= highWater
            if ex.machine.bodyHoldChanges(heldUp: heldUp) { ex.machine.bodyHeldUp(heldUp, now: monotonicMillis()) }
            if let b = ex.backend, b.isActive, ex.machine.awaitsRequestSentTime(upstreamEmpty: ex.upstream.isEmpty) {
                ex.machine.requestSent(at: monotonicMillis())
            }
        }
        if (c.readable && canRead(c)) || (c.exchange?.backend.map { $0.readable && canRead($0) } ?? false) {
            deferred.append(c)
        }
    }

    // MARK: - The request

    /// Pulls the next client parser event, if the buffers have room. True when something changed.
    func pumpRequest(_ c: ClientConnection) -> Bool {
        guard !c.closeAfterWrite else { return false }
        if let ex = c.exchange {
            guard !ex.machine.bodyDone, ex.upstream.pending < highWater else { return false }
        } else {
            guard c.output.pending < highWater else { return false }
        }
        let event: HTTPRequestParser.Event?
        do {
            event = try c.parser.next()
        } catch {
            requestFailed(c, error)
            return true
        }
        if let ex = c.exchange { return forwardRequestBody(c, ex, event) }
        switch event {
        case nil:
            if c.peerClosed && !c.closeAfterWrite {
                c.closeAfterWrite = true  // answer what was asked, then close
                return true
            }
            return false
        case .head(let head):
            beginExchange(c, head)
            return true
        case .body, .end:
            return false
        }
    }

    /// Passes an event of the request body to the exchange. True when something changed.
    func forwardRequestBody(_ c: ClientConnection, _ ex: Exchange, _ event: HTTPRequestParser.Event?) -> Bool {
        switch event {
        case nil:
            return perform(ex.machine.requestBodyStalled(clientClosed: c.peerClosed), ex)
        case .body(let bytes):
            perform(ex.machine.requestBody(bytes, limits: exchangeLimits), ex)
            return true
        case .end:
            perform(ex.machine.requestEnded(limits: exchangeLimits), ex)
            return true
        case .head:
            return false  // cannot happen: a head comes only after .end
        }
    }

    /// Performs a request action. True when it did something.
    @discardableResult
    func perform(_ action: ProxyExchangeStateMachine.RequestAction, _ ex: Exchange) -> Bool {
        switch action {
        case .none:
            return false
        case .sendUpstream(let bytes):
            ex.upstream.append(bytes)
            return true
        case .closeClient:
            abortClient(ex.client)  // the request can never be completed
            return true
        }
    }

    func beginExchange(_ c: ClientConnection, _ head: HTTPRequestHead) {
        counters.requests.add(1, ordering: .relaxed)
        let now = monotonicMillis()
        balancer.retryBudget.recordRequest(now: now)
        c.messageStart = 0
        let headBytes = HeaderRewriting.requestHead(
            head, clientAddress: c.remoteAddress, proto: configuration.forwardedProto, defaultHost: defaultHost,
            makeRequestID: { newRequestID() })
        let ex = Exchange(client: c, head: head, headBytes: headBytes, limits: exchangeLimits, now: now)
        c.exchange = ex
        if !ex.machine.hasBody, case .end? = try? c.parser.next() {
            perform(ex.machine.requestEnded(limits: exchangeLimits), ex)
        }
        if let limiter = balancer.rateLimiter, !limiter.allow(c.rateLimitKey, now: now) {
            counters.rateLimited.add(1, ordering: .relaxed)
            respondError(ex, .rateLimited(retryAfterSeconds: limiter.configuration.retryAfterSeconds))
        } else if head.path.hasPrefix(Balancer.adminPrefix) {
            respond(ex, balancer.adminResponseOnClientPort(head))
        } else if !balancer.localRoutes.isEmpty, let route = balancer.localRoutes.first(where: { head.path.hasPrefix($0.prefix) }) {
            respond(ex, route.respond(head))
        } else {
            startAttempt(ex)
        }
        if c.exchange === ex, ex.machine.sendsContinue {
            c.output.append(contentsOf: "HTTP/1.1 100 Continue\r\n\r\n".utf8)
        }
    }

    // MARK: - Attempts

    /// Sends the exchange to the next backend that can take it, queues it when
    /// all are at their cap, or answers 503/502/504.
    func startAttempt(_ ex: Exchange) {
        while true {
            let now = monotonicMillis()
            let excluding: UInt64
            let isRetry: Bool
            switch ex.machine.nextAttempt(limits: exchangeLimits) {
            case .respond(let answer): return giveUp(ex, answer)
            case .pickBackend(let tried, let retry): (excluding, isRetry) = (tried, retry)
            }
            let picked = registry.pick(excluding: excluding, now: now)
            guard case .backend(let backend) = picked else {
                return picked == .busy ? enqueue(ex, now: now) : giveUp(ex, ex.machine.giveUpAnswer)
            }
            if isRetry && !balancer.retryBudget.tryRetry(now: now) {
                registry.release(backend)
                counters.retryBudgetRefusals.add(1, ordering: .relaxed)
                return giveUp(ex, ex.machine.giveUpAnswer)
            }
            let attempt = ex.machine.attemptStarted()
            if attempt.isRetry {
                counters.retries.add(1, ordering: .relaxed)
                registry.states[backend].retries.add(1, ordering: .relaxed)
            }
            if let b = takeIdle(backend, probe: attempt.probesIdleConnection) ?? connect(backend, now: now) {
                attach(b, ex, now: now)
                return
            }
            registry.release(backend)
            leaveOut(backend, of: ex, now: now)
        }
    }

    /// No backend (or no retry) is left for the exchange.
    func giveUp(_ ex: Exchange, _ answer: ProxyErrorAnswer) {
        switch answer {
        case .gatewayTimeout: counters.gatewayTimeouts.add(1, ordering: .relaxed)
        case .badGateway: counters.badGateway.add(1, ordering: .relaxed)
        default: counters.noBackend.add(1, ordering: .relaxed)
        }
        respondError(ex, answer)
    }

    func attach(_ b: BackendConnection, _ ex: Exchange, now: Int64) {
        b.exchange = ex
        ex.backend = b
        b.parser.expectResponse(toHEAD: ex.machine.isHEAD)
        b.bytesReceived = 0
        b.lastRead = now
        b.lastWrite = now
        registry.states[b.backend].requests.add(1, ordering: .relaxed)
        schedule(ex.client)
    }

    func detach(_ b: BackendConnection) {
        guard let ex = b.exchange else { return }
        b.exchange = nil
        if ex.backend === b { ex.backend = nil }
        registry.release(b.backend)
        if registry.queued.load(ordering: .relaxed) > 0 { balancer.wakeLoops() }
    }

    /// Writes queued request bytes to the backend. True when bytes were written or the connection failed.
    func flushBackend(_ b: BackendConnection) -> Bool {
        guard b.isActive, let ex = b.exchange, ex.upstream.pending > 0 else { return false }
        let (written, failed) = ex.upstream.send(to: b.fd)
        if written > 0 { ex.machine.requestBytesWritten() }
        if failed {
            b.noteFailure(errno: errno)
            backendFailed(b, .broken)
            return true
        }
        if written > 0 { b.lastWrite = monotonicMillis() }
        return written > 0
    }

    // MARK: - The response

    /// Moves response events from the backend's parser to the client's output. True when something changed.
    func pumpResponse(_ b: BackendConnection) -> Bool {
        guard b.isActive, let ex = b.exchange else { return false }
        let c = ex.client
        var moved = false
        while c.output.pending < highWater && b.exchange === ex {
            var event: HTTPResponseParser.Event?
            do {
                event = try b.parser.next()
            } catch {
                badResponse(b, ex, error)
                return true
            }
            if event == nil && b.eof {
                do {
                    event = try b.parser.finish()
                } catch {
                    backendFailed(b, .broken)  // closed in the middle of a response
                    return true
                }
                if event == nil {
                    backendFailed(b, .broken)  // closed before a response
                    return true
                }
            }
            guard let event else { return moved }
            moved = true
            switch event {
            case .head(let head):
                switch ex.machine.responseHead(head, clientClosed: c.peerClosed, stopping: isStopping) {
                case .skip:
                    break
                case .reject(let error):
                    badResponse(b, ex, error)
                    return true
                case .send(let bytes):
                    registry.states[b.backend].responses.add(1, ordering: .relaxed)
                    c.output.append(bytes)
                }
            case .body(let bytes):
                switch ex.machine.responseBody() {
                case .drop: continue
                case .send: c.output.append(bytes)
                case .sendChunk: HeaderRewriting.appendChunk(&c.output, bytes)
                }
            case .end:
                let clean = ex.upstream.isEmpty && !b.eof && !b.hangup && b.parser.bufferedByteCount == 0 && !isStopping
                switch ex.machine.responseEnded(connectionClean: clean) {
                case .readOn:
                    continue
                case .finish(let lastChunk, let reuseBackend, let keepClient):
                    if lastChunk { c.output.append(HeaderRewriting.lastChunk) }
                    detach(b)
                    if reuseBackend { release(b) } else { closeBackend(b) }
                    endExchange(c, keepAlive: keepClient)
                    return true
                }
            }
        }
        return moved
    }

    /// The exchange is over (answered); the connection goes on with the next request or closes.
    func endExchange(_ c: ClientConnection, keepAlive: Bool) {
        if let ex = c.exchange { dequeue(ex) }
        c.exchange = nil
        if !keepAlive || isStopping {
            c.closeAfterWrite = true
        } else {
            c.messageStart = c.parser.isAtMessageBoundary ? 0 : monotonicMillis()
        }
        schedule(c)
    }

    // MARK: - Answers and failures

    /// Answers the exchange with an error of the balancer's own (only before any response byte).
    func respondError(_ ex: Exchange, _ answer: ProxyErrorAnswer) {
        respond(ex, answer.response)
    }

    /// Answers the exchange with a response of the balancer's own (only before any response byte).
    func respond(_ ex: Exchange, _ response: HTTPResponse) {
        let c = ex.client
        guard c.isOpen, c.exchange === ex, let answer = ex.machine.answer(clientClosed: c.peerClosed, stopping: isStopping)
        else { return }
        if let b = ex.backend {
            detach(b)
            closeBackend(b)
        }
        c.output.append(
            HTTPResponseSerializer.serialize(
                response, keepAlive: answer.keepAlive, headOnly: answer.headOnly, version: answer.version))
        endExchange(c, keepAlive: answer.keepAlive)
    }

    /// The client's request is malformed or over a limit.
    func requestFailed(_ c: ClientConnection, _ error: HTTPParseError) {
        counters.badRequests.add(1, ordering: .relaxed)
        logger.debug("bad request", metadata: ["status": "\(error.status)", "reason": "\(error.reason)"])
        if let ex = c.exchange {
            switch ex.machine.requestInvalid(error) {
            case .closeClient:
                counters.aborted.add(1, ordering: .relaxed)
                abortClient(c)
            case .respond(let answer):
                respondError(ex, answer)
            }
            return
        }
        c.output.append(HTTPResponseSerializer.serialize(ProxyErrorAnswer.badRequest(error).response, keepAlive: false))
        c.closeAfterWrite = true
    }

    /// A backend connection failed while carrying an exchange: retry, answer, or cut the client off.
    func backendFailed(_ b: BackendConnection, _ failure: ProxyExchangeStateMachine.Failure) {
        let ex = b.exchange
        let reused = b.reused
        let backend = b.backend
        // Asked of the socket before it is closed; only a request with no response byte yet can be unread.
        let unread =
            ex?.machine.asksWhetherUnread(failure, responseBytes: b.bytesReceived) == true && b.closedBeforeRequestArrived
        detach(b)
        closeBackend(b)
        guard let ex, ex.client.isOpen, ex.client.exchange === ex else { return }
        let c = ex.client
        let now = monotonicMillis()
        defer { schedule(c) }
        switch ex.machine.backendFailed(failure, backend: backend, reused: reused, unread: unread) {
        case .closeClient(let verdict):
            judge(backend, verdict, now: now)
            counters.aborted.add(1, ordering: .relaxed)
            abortClient(c)
        case .retry(let resend, let verdict, let unreadRetry):
            judge(backend, verdict, now: now)
            if unreadRetry {
                counters.unreadRetries.add(1, ordering: .relaxed)
                logger.debug(
                    "backend closed the connection without reading the request; sending it again",
                    metadata: ["backend": "\(registry.states[backend].configuration.name)", "method": "\(ex.method)"])
            }
            if let resend { ex.upstream = OutputBuffer(resend) }
            startAttempt(ex)
        case .respond(let answer, let verdict):
            judge(backend, verdict, now: now)
            if answer == .backendTimeout {
                counters.gatewayTimeouts.add(1, ordering: .relaxed)
            } else {
                counters.badGateway.add(1, ordering: .relaxed)
            }
            respondError(ex, answer)
        }
    }

    /// Records what a failure says about a backend.
    func judge(_ backend: Int, _ verdict: ProxyExchangeStateMachine.BackendVerdict, now: Int64) {
        switch verdict {
        case .none: break
        case .failed: registry.states[backend].failures.add(1, ordering: .relaxed)
        case .down: registry.connectFailed(backend, now: now)
        }
    }

    /// The backend's response is malformed: never retried (the backend may have acted on the request).
    func badResponse(_ b: BackendConnection, _ ex: Exchange, _ error: HTTPParseError) {
        logger.warning(
            "bad response from backend",
            metadata: ["backend": "\(registry.states[b.backend].configuration.name)", "reason": "\(error.reason)"])
        registry.states[b.backend].failures.add(1, ordering: .relaxed)
        detach(b)
        closeBackend(b)
        switch ex.machine.invalidResponse() {
        case .closeClient:
            counters.aborted.add(1, ordering: .relaxed)
            abortClient(ex.client)
        case .respond(let answer):
            counters.badGateway.add(1, ordering: .relaxed)
            respondError(ex, answer)
        }
    }

    /// Writes what it can to the client; closes when done and the connection must close.
    func flushClient(_ c: ClientConnection) -> Bool {
        let (written, failed) = c.output.send(to: c.fd)
        if failed {
            if c.exchange?.machine.responseStarted == true { counters.aborted.add(1, ordering: .relaxed) }
            abortClient(c)
            return true
        }
        let wrote = written > 0
        if wrote { c.lastWrite = monotonicMillis() }
        if c.output.isEmpty && c.exchange == nil {
            if c.closeAfterWrite || (isStopping && c.parser.isAtMessageBoundary) {
                closeClient(c)
                return true
            }
        }
        return wrote
    }
}
