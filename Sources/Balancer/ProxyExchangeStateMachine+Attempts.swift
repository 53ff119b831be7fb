// Attempts, retries and timeouts of an exchange: which backend may be asked next, what a
// failure leads to, and which error answers giving up.
extension ProxyExchangeStateMachine {
    // MARK: - Attempts

    /// The next step of sending the request to a backend.
    enum AttemptAction: Equatable {
        /// Pick a backend not in `excluding` (a bit per index); a retry only with a token of the retry budget.
        case pickBackend(excluding: UInt64, isRetry: Bool)
        /// No attempt is left: answer with this.
        case respond(ProxyErrorAnswer)
    }

    /// Asked before each attempt.
    func nextAttempt(limits: Limits) -> AttemptAction {
        attempts < limits.maxAttempts ? .pickBackend(excluding: tried, isRetry: attempts > 0) : .respond(giveUpAnswer)
    }

    /// The answer when no backend (or no retry) is left: 504 after a timeout, 502 when a backend had the request, else 503.
    var giveUpAnswer: ProxyErrorAnswer {
        if timedOut { return .gatewayTimeout }
        return everSent ? .badGateway : .noBackend
    }

    /// A backend was picked and its slot taken: the attempt starts. `probesIdleConnection`: a pooled
    /// connection must be checked before use, since a failure on it could not be retried.
    mutating func attemptStarted() -> (isRetry: Bool, probesIdleConnection: Bool) {
        attempts += 1
        sentOnAttempt = false
        requestSentAt = 0
        phase = .requesting
        responseKeepAlive = false
        return (attempts > 1, !(retriable && replay != nil))
    }

    /// This request asks `backend` no more.
    mutating func leaveOut(_ backend: Int) {
        tried |= 1 << UInt64(backend)
    }

    /// Every backend is at its cap: the request waits from `now` (its first wait counts).
    mutating func enqueued(now: Int64) {
        if queuedSince == 0 { queuedSince = now }
    }

    /// What a waiting request does when its turn comes.
    enum QueueAction: Equatable {
        /// Start the next attempt.
        case tryAgain
        /// Answer with this (it waited too long).
        case respond(ProxyErrorAnswer)
    }

    /// A waiting request's turn came at `now`: try again, or 503 when it waited too long.
    func queueTurn(now: Int64, limits: Limits) -> QueueAction {
        now - queuedSince > limits.queueTimeoutMillis ? .respond(.backendsBusy) : .tryAgain
    }

    // MARK: - Failures

    /// What a failure says about the backend.
    enum BackendVerdict: Equatable {
        /// Nothing (a pooled connection may have been closed by a healthy backend).
        case none
        /// Count a failure (it timed out or cut a response off), without leaving it out of the rotation.
        case failed
        /// Count a connect failure: left out of the rotation for a while (and by this request).
        case down
    }

    /// What the loop does after a backend connection carrying the exchange failed (and was closed).
    enum FailureAction: Equatable {
        /// Close the client: the response had started.
        case closeClient(BackendVerdict)
        /// Ask another backend (start the next attempt); `resend`: the request from its start,
        /// to be written again (nil: the buffered bytes, none of which were written, stay as they are).
        /// `unreadRetry`: sent again because the backend provably did not read it.
        case retry(resend: [UInt8]?, backend: BackendVerdict, unreadRetry: Bool)
        /// Answer the client with an error.
        case respond(ProxyErrorAnswer, backend: BackendVerdict)
    }

    /// Whether the failure's handling needs to know if the backend provably did not read the request
    /// (a broken connection that had request bytes, and gave no response byte: `responseBytes`).
    func asksWhetherUnread(_ failure: Failure, responseBytes: Int) -> Bool {
        failure == .broken && sentOnAttempt && responseBytes == 0
    }

    /// The connection to `backend` failed; `reused`: it came from the pool; `unread`: the backend
    /// provably closed it before the request arrived (see `asksWhetherUnread`).
    mutating func backendFailed(_ failure: Failure, backend: Int, reused: Bool, unread: Bool) -> FailureAction {
        if responseStarted {
            phase = .done
            return .closeClient(.failed)
        }
        switch failure {
        case .connect:
            leaveOut(backend)
            return .retry(resend: nil, backend: .down, unreadRetry: false)
        case .timeout where isSafeMethod && bodyDone && replay != nil:
            // A safe method (GET, HEAD, OPTIONS) changes nothing: a stalled backend's request is asked elsewhere.
            // Not ejected for it (a slow endpoint is not a dead backend); left out for this request only.
            leaveOut(backend)
            timedOut = true
            return .retry(resend: replay, backend: .failed, unreadRetry: false)
        case .timeout:
            clientKeepAlive = clientKeepAlive && bodyDone
            return .respond(.backendTimeout, backend: .failed)
        case .broken:
            if !sentOnAttempt {
                // Nothing of this request reached the backend: any method may go elsewhere.
                if !reused { leaveOut(backend) }
                return .retry(resend: nil, backend: reused ? .none : .down, unreadRetry: false)
            }
            if unread || retriable, let replay {
                // Sent, no answer: sent again when the backend provably did not read it (it closed the
                // connection, e.g. at the end of a drain, while the request was on its way), or when it is
                // safe to repeat.
                if !reused { leaveOut(backend) }
                return .retry(resend: replay, backend: reused ? .none : .down, unreadRetry: unread)
            }
            return .respond(.notRepeated, backend: reused ? .none : .down)
        }
    }

    /// The backend's response is malformed: never retried (the backend may have acted on the request).
    mutating func invalidResponse() -> AnswerAction {
        answerOrCloseClient(.invalidResponse)
    }

    // MARK: - Timeouts

    /// The sweep at `now`: whether the request body is overdue, and then what to do (nil: it is not).
    /// The body has `Limits.clientBodyTimeoutMillis` from the end of the head, not counting the time
    /// the backend held it up (never overdue while it is held up).
    mutating func bodyDeadline(now: Int64, limits: Limits) -> AnswerAction? {
        guard !bodyDone, bodyHeldSince == 0, now - bodyStart > limits.clientBodyTimeoutMillis else { return nil }
        clientKeepAlive = false
        return answerOrCloseClient(.bodyTimeout)
    }

    /// The sweep at `now`: whether the backend carrying the exchange is too slow. Before a response:
    /// no response `backendResponseTimeoutMillis` after the request was sent, or taking none of the
    /// request's pending bytes (`upstreamPending`) for `backendIdleTimeoutMillis`. While a response
    /// streams: sending nothing for `backendIdleTimeoutMillis` while the client takes it
    /// (`clientHasRoom`).
    func backendOverdue(
        now: Int64, lastRead: Int64, lastWrite: Int64, upstreamPending: Bool, clientHasRoom: Bool, limits: Limits
    ) -> Bool {
        if !responseStarted {
            if requestSentAt != 0 && now - requestSentAt > limits.backendResponseTimeoutMillis { return true }
            return upstreamPending && now - lastWrite > limits.backendIdleTimeoutMillis
        }
        return clientHasRoom && now - lastRead > limits.backendIdleTimeoutMillis
    }
}
