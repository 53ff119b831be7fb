import MiniHTTP

/// The decisions of one exchange (a client's request and its response, across retries), as a
/// value: each event is a `mutating func` that returns what the loop must do. No sockets, no
/// descriptors, no clock: times come in as monotonic milliseconds. `ProxyLoop+Exchange` feeds
/// it the parsers' events and performs its actions. Its state is read by the loop and changed
/// only by its events (they span three files, so the setters cannot be private).
///
/// ```
/// requesting ─head─► streaming ─end─► done        (1xx heads: skippingInterim, then requesting again)
///     │ failure: retry (attempts, replay) or answer 502 / 503 / 504
///     ▼ answer (error or the balancer's own): done; after a response byte, only closing the client
/// ```
struct ProxyExchangeStateMachine {
    /// Where the exchange is.
    enum Phase: Equatable {
        /// No response byte forwarded yet: the request may still be retried or answered by the balancer.
        case requesting
        /// An interim (1xx) response from the backend is being dropped.
        case skippingInterim
        /// The response head went to the client, its body framed as given.
        case streaming(ClientFraming)
        /// Answered, finished or given up on.
        case done
    }

    /// How the response body is framed towards the client.
    enum ClientFraming: Equatable {
        /// Bytes as received (Content-Length or no body).
        case asIs
        /// Re-chunked (the backend's body was chunked or close-delimited).
        case chunked
        /// Close-delimited (an HTTP/1.0 client and a body of unknown length).
        case untilClose
    }

    /// Why a backend connection failed.
    enum Failure: Equatable {
        /// The connection could not be made.
        case connect
        /// Written to or read from, the connection broke or closed.
        case broken
        /// The backend did not answer or read in time.
        case timeout
    }

    /// The configuration's limits that the decisions use.
    struct Limits: Equatable {
        /// Request bytes kept for a replay (head included); a longer request cannot be sent again.
        var replayBytes: Int
        /// Attempts per request (connects and sends), first one included.
        var maxAttempts: Int
        var clientBodyTimeoutMillis: Int64
        var backendResponseTimeoutMillis: Int64
        var backendIdleTimeoutMillis: Int64
        var queueTimeoutMillis: Int64
    }

    var phase = Phase.requesting
    let isHEAD: Bool
    /// GET, HEAD or OPTIONS: also asked elsewhere when a backend does not answer in time.
    let isSafeMethod: Bool
    /// May be sent again after it reached a backend: idempotent method or Idempotency-Key.
    let retriable: Bool
    /// The body goes upstream re-chunked.
    let chunkedRequest: Bool
    /// A body is announced (neither absent nor of length 0).
    let hasBody: Bool
    /// `Expect: 100-continue` with a body: the balancer answers it itself.
    let expectsContinue: Bool
    let clientVersion: HTTPVersion
    /// The client connection stays open after this exchange.
    var clientKeepAlive: Bool
    /// The client parser reported the end of the request.
    var bodyDone = false
    /// Every request byte produced so far, while they fit `Limits.replayBytes`; nil after. Kept for
    /// every method: even a request that may not be repeated is sent again when the backend
    /// provably did not read it (see `BackendConnection.closedBeforeRequestArrived`).
    var replay: [UInt8]?
    /// Where the body's time started (the end of the head), moved later by the time reading it
    /// was held up by the backend: the body deadline counts from here.
    var bodyStart: Int64
    /// Since when reading the body has been held up by the backend (0: not held up).
    var bodyHeldSince: Int64 = 0
    /// When the last request byte was written to the backend (0: not yet on this attempt).
    var requestSentAt: Int64 = 0
    /// When it first had to wait for a backend slot (0: never).
    var queuedSince: Int64 = 0
    /// Backends already tried and failed (a bit per index).
    var tried: UInt64 = 0
    var attempts = 0
    /// Bytes of this request reached the current backend connection.
    var sentOnAttempt = false
    /// Bytes of this request reached some backend (then giving up answers 502, not 503).
    var everSent = false
    /// A backend did not answer this (safe) request in time (then giving up answers 504).
    var timedOut = false
    /// The backend's final response allows another request on its connection.
    var responseKeepAlive = false

    static let idempotentMethods: Set<String> = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]

    /// A request whose head was read at `now`; `headBytes` is the head as it goes upstream.
    init(head: HTTPRequestHead, headBytes: [UInt8], limits: Limits, now: Int64) {
        isHEAD = head.method == "HEAD"
        isSafeMethod = isHEAD || head.method == "GET" || head.method == "OPTIONS"
        retriable = Self.idempotentMethods.contains(head.method) || head.headers.contains(name: "Idempotency-Key")
        chunkedRequest = head.bodyFraming == .chunked
        switch head.bodyFraming {
        case .none, .contentLength(0): hasBody = false
        default: hasBody = true
        }
        expectsContinue = hasBody && head.expectsContinue
        clientVersion = head.version
        clientKeepAlive = head.keepAlive
        replay = headBytes.count <= limits.replayBytes ? headBytes : nil
        bodyStart = now
    }

    /// The response head went to the client: no retry and no error answer any more.
    var responseStarted: Bool {
        if case .streaming = phase { true } else { false }
    }

    /// Whether to send `100 Continue` to the client now that its head was handled (not when it was answered already).
    var sendsContinue: Bool { expectsContinue && phase != .done }

    // MARK: - The request

    /// What the loop does with the request.
    enum RequestAction: Equatable {
        case none
        /// Queue these bytes for the backend.
        case sendUpstream([UInt8])
        /// Close the client connection: the request can never be completed.
        case closeClient
    }

    /// A piece of the request body arrived.
    mutating func requestBody(_ bytes: [UInt8], limits: Limits) -> RequestAction {
        guard chunkedRequest else {
            keepForReplay(bytes, limits: limits)
            return .sendUpstream(bytes)
        }
        var framed = OutputBuffer()
        HeaderRewriting.appendChunk(&framed, bytes)
        keepForReplay(framed.bytes, limits: limits)
        return .sendUpstream(framed.bytes)
    }

    /// The request is complete.
    mutating func requestEnded(limits: Limits) -> RequestAction {
        defer { bodyDone = true }
        guard chunkedRequest else { return .none }
        keepForReplay(HeaderRewriting.lastChunk, limits: limits)
        return .sendUpstream(HeaderRewriting.lastChunk)
    }

    /// The client parser has nothing more for now; `clientClosed`: and the client sent its last byte.
    mutating func requestBodyStalled(clientClosed: Bool) -> RequestAction {
        guard clientClosed, !bodyDone else { return .none }
        phase = .done
        return .closeClient
    }

    /// The request is malformed or over a limit.
    mutating func requestInvalid(_ error: HTTPParseError) -> AnswerAction {
        clientKeepAlive = false
        return answerOrCloseClient(.badRequest(error))
    }

    private mutating func keepForReplay(_ bytes: [UInt8], limits: Limits) {
        guard replay != nil else { return }
        if replay!.count + bytes.count <= limits.replayBytes {
            replay!.append(contentsOf: bytes)
        } else {
            replay = nil
        }
    }

    /// Whether reading the body being held up by the backend (`heldUp`) or not changes, while the body is read.
    func bodyHoldChanges(heldUp: Bool) -> Bool {
        !bodyDone && heldUp == (bodyHeldSince == 0)
    }

    /// Reading the body is held up by the backend (or no longer) since `now`: that time does not
    /// count against the body deadline.
    mutating func bodyHeldUp(_ heldUp: Bool, now: Int64) {
        if heldUp && bodyHeldSince == 0 {
            bodyHeldSince = now
        } else if !heldUp && bodyHeldSince != 0 {
            bodyStart += now - bodyHeldSince
            bodyHeldSince = 0
        }
    }

    /// Request bytes reached the backend connection.
    mutating func requestBytesWritten() {
        sentOnAttempt = true
        everSent = true
    }

    /// Whether the time the request was sent is wanted, now that all of it is written (`upstreamEmpty`).
    func awaitsRequestSentTime(upstreamEmpty: Bool) -> Bool {
        requestSentAt == 0 && bodyDone && upstreamEmpty
    }

    /// The last request byte was written at `now`: the backend's response time runs from here.
    mutating func requestSent(at now: Int64) { requestSentAt = now }

    // MARK: - Answers of the balancer's own

    /// What the loop does when an event ends the exchange with an error.
    enum AnswerAction: Equatable {
        /// Answer the client with this error (then `answer` tells how).
        case respond(ProxyErrorAnswer)
        /// Close the client connection: the response had started, nothing else can reach it.
        case closeClient
    }

    /// How an answer of the balancer's own goes to the client.
    struct Answer: Equatable {
        var keepAlive: Bool
        var headOnly: Bool
        var version: HTTPVersion
    }

    /// The balancer answers the request itself (an error, an admin or local route); nil when a
    /// response already started or the exchange is over.
    mutating func answer(clientClosed: Bool, stopping: Bool) -> Answer? {
        guard phase == .requesting || phase == .skippingInterim else { return nil }
        phase = .done
        return Answer(
            keepAlive: clientKeepAlive && bodyDone && !clientClosed && !stopping, headOnly: isHEAD,
            version: clientVersion)
    }

    /// Answer with `error`, or close the client when the response had started.
    mutating func answerOrCloseClient(_ error: ProxyErrorAnswer) -> AnswerAction {
        guard !responseStarted else {
            phase = .done
            return .closeClient
        }
        return .respond(error)
    }
}
