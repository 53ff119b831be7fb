#if canImport(Glibc)
import Glibc
#endif
import Logging
import MiniHTTP
import SystemSupport

// The exchange state machine: a request read, sent to a backend (with retries),
// its response streamed back; errors answered.
extension ProxyLoop {
    // MARK: - The state machine

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
            if !ex.bodyDone { ex.noteBodyHeldUp(ex.upstream.pending >= highWater) }
            if let b = ex.backend, ex.requestSentAt == 0, ex.bodyDone, ex.upstream.isEmpty, b.isActive {
                ex.requestSentAt = monotonicMillis()
            }
        }
        if (c.readable && canRead(c)) || (c.exchange?.backend.map { $0.readable && canRead($0) } ?? false) {
            deferred.append(c)
        }
    }

    /// Pulls the next client parser event, if the buffers have room. True when something changed.
    func pumpRequest(_ c: ClientConnection) -> Bool {
        guard !c.closeAfterWrite else { return false }
        if let ex = c.exchange {
            guard !ex.bodyDone, ex.upstream.pending < highWater else { return false }
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

    /// Passes an event of the request body on to the exchange's upstream buffer. True when something changed.
    func forwardRequestBody(_ c: ClientConnection, _ ex: Exchange, _ event: HTTPRequestParser.Event?) -> Bool {
        switch event {
        case nil:
            if c.peerClosed {
                abortClient(c)  // the request can never be completed
                return true
            }
            return false
        case .body(let bytes):
            if ex.requestFraming == .chunked {
                var framed = OutputBuffer()
                HeaderRewriting.appendChunk(&framed, bytes)
                ex.appendUpstream(framed.bytes, replayLimit: configuration.replayBufferBytes)
            } else {
                ex.appendUpstream(bytes, replayLimit: configuration.replayBufferBytes)
            }
            return true
        case .end:
            if ex.requestFraming == .chunked {
                ex.appendUpstream(HeaderRewriting.lastChunk, replayLimit: configuration.replayBufferBytes)
            }
            ex.bodyDone = true
            return true
        case .head:
            return false  // cannot happen: a head comes only after .end
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
        let ex = Exchange(
            client: c, head: head, headBytes: headBytes, replayLimit: configuration.replayBufferBytes, now: now)
        c.exchange = ex
        let hasBody: Bool
        switch head.bodyFraming {
        case .none, .contentLength(0): hasBody = false
        default: hasBody = true
        }
        if !hasBody, case .end? = try? c.parser.next() {
            ex.bodyDone = true
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
        if hasBody, head.expectsContinue, c.exchange === ex {
            c.output.append(contentsOf: "HTTP/1.1 100 Continue\r\n\r\n".utf8)
        }
    }

    /// Sends the exchange to the next backend that can take it, queues it when
    /// all are at their cap, or answers 503/502.
    func startAttempt(_ ex: Exchange) {
        while true {
            let now = monotonicMillis()
            guard ex.attempts < maxAttempts else { return giveUp(ex) }
            let picked = registry.pick(excluding: ex.tried, now: now)
            guard case .backend(let backend) = picked else {
                return picked == .busy ? enqueue(ex, now: now) : giveUp(ex)
            }
            if ex.attempts > 0 && !balancer.retryBudget.tryRetry(now: now) {
                registry.release(backend)
                counters.retryBudgetRefusals.add(1, ordering: .relaxed)
                return giveUp(ex)
            }
            ex.attempts += 1
            if ex.attempts > 1 {
                counters.retries.add(1, ordering: .relaxed)
                registry.states[backend].retries.add(1, ordering: .relaxed)
            }
            ex.sentOnAttempt = false
            ex.requestSentAt = 0
            if let b = takeIdle(backend, probe: !(ex.retriable && ex.replay != nil)) ?? connect(backend, now: now) {
                attach(b, ex, now: now)
                return
            }
            registry.release(backend)
            leaveOut(backend, of: ex, now: now)
        }
    }

    /// No backend (or no retry) is left for the exchange: 502 when a backend had the request, else 503.
    func giveUp(_ ex: Exchange) {
        if ex.timedOut {
            counters.gatewayTimeouts.add(1, ordering: .relaxed)
            respondError(ex, .gatewayTimeout)
        } else if ex.everSent {
            counters.badGateway.add(1, ordering: .relaxed)
            respondError(ex, .badGateway)
        } else {
            counters.noBackend.add(1, ordering: .relaxed)
            respondError(ex, .noBackend)
        }
    }

    func attach(_ b: BackendConnection, _ ex: Exchange, now: Int64) {
        b.exchange = ex
        ex.backend = b
        b.parser.expectResponse(toHEAD: ex.isHEAD)
        b.skippingInterim = false
        b.responseKeepAlive = false
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
        if written > 0 {
            ex.sentOnAttempt = true
            ex.everSent = true
        }
        if failed {
            b.noteFailure(errno: errno)
            backendFailed(b, .broken)
            return true
        }
        if written > 0 { b.lastWrite = monotonicMillis() }
        return written > 0
    }

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
                if head.isInterim {
                    if head.status == 101 {
                        badResponse(b, ex, HTTPParseError(status: 502, reason: "protocol switch not supported"))
                        return true
                    }
                    b.skippingInterim = true
                } else {
                    startResponse(ex, b, head)
                }
            case .body(let bytes):
                if b.skippingInterim { continue }
                switch ex.clientFraming {
                case .chunked: HeaderRewriting.appendChunk(&c.output, bytes)
                case .asIs, .untilClose: c.output.append(bytes)
                }
            case .end:
                if b.skippingInterim {
                    b.skippingInterim = false
                    continue
                }
                finishExchange(ex, b)
                return true
            }
        }
        return moved
    }

    func startResponse(_ ex: Exchange, _ b: BackendConnection, _ head: HTTPResponseHead) {
        let c = ex.client
        ex.responseStarted = true
        b.responseKeepAlive = head.keepAlive
        registry.states[b.backend].responses.add(1, ordering: .relaxed)
        let keep = ex.clientKeepAlive && ex.bodyDone && !c.peerClosed && !isStopping
        let rewritten = HeaderRewriting.responseHead(head, clientVersion: ex.clientVersion, keepAlive: keep)
        ex.clientFraming = rewritten.framing
        ex.clientKeepAlive = rewritten.keepAlive
        c.output.append(rewritten.bytes)
    }

    func finishExchange(_ ex: Exchange, _ b: BackendConnection) {
        let c = ex.client
        if ex.clientFraming == .chunked { c.output.append(HeaderRewriting.lastChunk) }
        let reusable = b.responseKeepAlive && ex.bodyDone && ex.upstream.isEmpty && !b.eof && !b.hangup
            && b.parser.bufferedByteCount == 0 && !isStopping
        detach(b)
        if reusable { release(b) } else { closeBackend(b) }
        endExchange(c, keepAlive: ex.clientKeepAlive && ex.clientFraming != .untilClose)
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

    /// Answers the exchange with an error of the balancer's own (only before any response byte).
    func respondError(_ ex: Exchange, _ answer: ProxyErrorAnswer) {
        respond(ex, answer.response)
    }

    /// Answers the exchange with a response of the balancer's own (only before any response byte).
    func respond(_ ex: Exchange, _ response: HTTPResponse) {
        let c = ex.client
        guard c.isOpen, c.exchange === ex, !ex.responseStarted else { return }
        if let b = ex.backend {
            detach(b)
            closeBackend(b)
        }
        let keep = ex.clientKeepAlive && ex.bodyDone && !c.peerClosed && !isStopping
        c.output.append(
            HTTPResponseSerializer.serialize(response, keepAlive: keep, headOnly: ex.isHEAD, version: ex.clientVersion))
        endExchange(c, keepAlive: keep)
    }

    /// The client's request is malformed or over a limit.
    func requestFailed(_ c: ClientConnection, _ error: HTTPParseError) {
        counters.badRequests.add(1, ordering: .relaxed)
        logger.debug("bad request", metadata: ["status": "\(error.status)", "reason": "\(error.reason)"])
        if let ex = c.exchange {
            if ex.responseStarted {
                counters.aborted.add(1, ordering: .relaxed)
                abortClient(c)
                return
            }
            ex.clientKeepAlive = false
            respondError(ex, .badRequest(error))
            return
        }
        c.output.append(HTTPResponseSerializer.serialize(ProxyErrorAnswer.badRequest(error).response, keepAlive: false))
        c.closeAfterWrite = true
    }

    enum Failure {
        /// The connection could not be made.
        case connect
        /// Written to or read from, the connection broke or closed.
        case broken
        /// The backend did not answer or read in time.
        case timeout
    }

    /// A backend connection failed while carrying an exchange: retry, answer, or cut the client off.
    func backendFailed(_ b: BackendConnection, _ failure: Failure) {
        let ex = b.exchange
        let reused = b.reused
        let backend = b.backend
        // Asked of the socket before it is closed; only a request with no response byte yet can be unread.
        let unread = failure == .broken && ex?.sentOnAttempt == true && b.bytesReceived == 0 && b.closedBeforeRequestArrived
        detach(b)
        closeBackend(b)
        guard let ex, ex.client.isOpen, ex.client.exchange === ex else { return }
        let c = ex.client
        let state = registry.states[backend]
        let now = monotonicMillis()
        defer { schedule(c) }
        if ex.responseStarted {
            state.failures.add(1, ordering: .relaxed)
            counters.aborted.add(1, ordering: .relaxed)
            abortClient(c)
            return
        }
        switch failure {
        case .connect:
            leaveOut(backend, of: ex, now: now)
            startAttempt(ex)
        case .timeout where ex.isSafeMethod && ex.bodyDone && ex.replay != nil:
            // A safe method (GET, HEAD, OPTIONS) changes nothing: a stalled backend's request is asked elsewhere.
            // Not ejected for it (a slow endpoint is not a dead backend); left out for this request only.
            state.failures.add(1, ordering: .relaxed)
            ex.tried |= 1 << UInt64(backend)
            ex.timedOut = true
            ex.upstream = OutputBuffer(ex.replay!)
            startAttempt(ex)
        case .timeout:
            state.failures.add(1, ordering: .relaxed)
            counters.gatewayTimeouts.add(1, ordering: .relaxed)
            ex.clientKeepAlive = ex.clientKeepAlive && ex.bodyDone
            respondError(ex, .backendTimeout)
        case .broken:
            if !ex.sentOnAttempt {
                // Nothing of this request reached the backend: any method may go elsewhere.
                if !reused { leaveOut(backend, of: ex, now: now) }
                startAttempt(ex)
            } else if unread || ex.retriable, let replay = ex.replay {
                // Sent, no answer: sent again when the backend provably did not read it (it closed the
                // connection, e.g. at the end of a drain, while the request was on its way), or when it is
                // safe to repeat.
                if !reused { leaveOut(backend, of: ex, now: now) }
                if unread {
                    counters.unreadRetries.add(1, ordering: .relaxed)
                    logger.debug(
                        "backend closed the connection without reading the request; sending it again",
                        metadata: ["backend": "\(registry.states[backend].configuration.name)", "method": "\(ex.method)"])
                }
                ex.upstream = OutputBuffer(replay)
                startAttempt(ex)
            } else {
                if !reused { registry.connectFailed(backend, now: now) }
                counters.badGateway.add(1, ordering: .relaxed)
                respondError(ex, .notRepeated)
            }
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
        let c = ex.client
        if ex.responseStarted {
            counters.aborted.add(1, ordering: .relaxed)
            abortClient(c)
            return
        }
        counters.badGateway.add(1, ordering: .relaxed)
        respondError(ex, .invalidResponse)
    }

    /// Writes what it can to the client; closes when done and the connection must close.
    func flushClient(_ c: ClientConnection) -> Bool {
        let (written, failed) = c.output.send(to: c.fd)
        if failed {
            if c.exchange?.responseStarted == true { counters.aborted.add(1, ordering: .relaxed) }
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
