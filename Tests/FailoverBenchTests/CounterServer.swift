#if canImport(Glibc)
import Glibc
#endif
import FailoverBench
import Logging
import MiniHTTP
import Synchronization
import Testing
@_exported import TestSupport

/// Ways the test server misbehaves, each at chosen request numbers (1-based,
/// counted over all requests the server receives).
///
/// A misbehaviour is armed when its request number arrives and fires on the
/// first request from then on that it applies to (one that is not a retry of
/// a key seen before, and whose session is in the needed state), so every
/// armed misbehaviour fires exactly once whatever the users' interleaving.
/// At most one fires per request.
struct Misbehavior: Sendable {
    /// 503 without applying anything (any request).
    var unavailableAt: [Int] = []
    /// A write is applied (and its answer stored for its key), then 503.
    var unavailableAfterApplyAt: [Int] = []
    /// The session is dropped (one whose counter is ≥ 1): a write answers 1, a read 0.
    var resetAt: [Int] = []
    /// A write is applied twice.
    var doubleApplyAt: [Int] = []
    /// A write (counter ≥ 2) is not applied and answers the old count.
    var loseUpdateAt: [Int] = []
    /// A read (counter ≥ 2) answers one less.
    var staleReadAt: [Int] = []
    /// A write of a session that exists answers 503 without applying; its increment is applied
    /// when the session's second write after it arrives (as a write still running on a node
    /// that timed out would be), before that write's own.
    var applyLateAt: [Int] = []
    /// Whether a repeated `Idempotency-Key` gets the stored answer.
    var dedup = true
    /// Request number and milliseconds: that request waits before it is answered.
    var stall: (request: Int, millis: Int)?

    enum Kind: CaseIterable {
        case unavailable, unavailableAfterApply, reset, doubleApply, loseUpdate, staleRead, applyLate
    }

    func requests(_ kind: Kind) -> [Int] {
        switch kind {
        case .unavailable: unavailableAt
        case .unavailableAfterApply: unavailableAfterApplyAt
        case .reset: resetAt
        case .doubleApply: doubleApplyAt
        case .loseUpdate: loseUpdateAt
        case .staleRead: staleReadAt
        case .applyLate: applyLateAt
        }
    }
}

/// A counter service like the cluster demo's (`POST /api/counter`,
/// `GET /api/session`, cookie `sid`, `X-Served-By` alternating between two
/// node names), on MiniHTTP's server at a free loopback port, that can be
/// told to misbehave deterministically.
final class CounterServer: Sendable {
    private struct State: Sendable {
        var requests = 0
        var nextSession = 0
        var sessions: [String: Int] = [:]
        var answers: [String: Int] = [:]
        var seenKeys: Set<String> = []
        var armed: [Misbehavior.Kind: Int] = [:]
        var fired: [Misbehavior.Kind: Int] = [:]
        var unavailableWrites = 0
        var down = false
        /// Sessions with a late increment (`applyLate`): the writes still to arrive before it is applied.
        var late: [String: Int] = [:]
        var keyedRequests = 0
    }

    static let nodes = ["node-a", "node-b"]
    private let misbehavior: Misbehavior
    private let state = Mutex(State())
    private let server = Mutex<HTTPServer?>(nil)

    init(_ misbehavior: Misbehavior = Misbehavior(), idleTimeoutMillis: Int = 5_000) throws {
        self.misbehavior = misbehavior
        let http = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: "127.0.0.1", port: 0, eventLoops: 1, handlerThreads: 4, maxConnections: 256,
                idleTimeoutMillis: idleTimeoutMillis, shutdownGraceMillis: 2_000),
            logger: Logger(label: "counter-server", factory: { _ in SwiftLogNoOpLogHandler() })
        ) { [self] request in respond(to: request) }
        try http.start()
        server.withLock { $0 = http }
    }

    var port: Int { server.withLock { $0?.port ?? 0 } }
    var url: String { "http://127.0.0.1:\(port)" }

    /// How often a misbehaviour fired.
    func fired(_ kind: Misbehavior.Kind) -> Int { state.withLock { $0.fired[kind, default: 0] } }
    /// How many 503s (of either kind) answered writes, which the client retries.
    var unavailableWrites: Int { state.withLock { $0.unavailableWrites } }
    var requests: Int { state.withLock { $0.requests } }
    /// Requests that carried an `Idempotency-Key`.
    var keyedRequests: Int { state.withLock { $0.keyedRequests } }
    /// While down, every request gets a 503 (for fault-injection tests).
    func setDown(_ down: Bool) { state.withLock { $0.down = down } }

    func shutdown() {
        let http = server.withLock { s -> HTTPServer? in
            defer { s = nil }
            return s
        }
        http?.shutdown()
    }

    deinit { shutdown() }

    private func respond(to request: HTTPRequest) -> HTTPResponse {
        let stall = state.withLock { s -> Int? in
            s.requests += 1
            for kind in Misbehavior.Kind.allCases where misbehavior.requests(kind).contains(s.requests) {
                s.armed[kind, default: 0] += 1
            }
            return misbehavior.stall.flatMap { $0.request == s.requests ? $0.millis : nil }
        }
        if let stall { usleep(UInt32(stall * 1000)) }
        return state.withLock { s in answer(request, &s) }
    }

    private func answer(_ request: HTTPRequest, _ s: inout State) -> HTTPResponse {
        let isWrite = request.method == "POST"
        if s.down { return unavailable(&s, write: isWrite, cookie: nil) }
        var sid = request.cookie("sid")
        let key = request.headers["Idempotency-Key"]
        let isRetry = key.map { s.seenKeys.contains($0) } ?? false
        if let key {
            s.seenKeys.insert(key)
            s.keyedRequests += 1
        }
        var firedOne = false
        func fire(_ kind: Misbehavior.Kind, when eligible: Bool) -> Bool {
            guard !firedOne, !isRetry, eligible, s.armed[kind, default: 0] > 0 else { return false }
            s.armed[kind, default: 0] -= 1
            s.fired[kind, default: 0] += 1
            firedOne = true
            return true
        }
        if fire(.unavailable, when: true) { return unavailable(&s, write: isWrite, cookie: nil) }
        if isWrite, let id = sid, let wait = s.late[id] {
            s.late[id] = wait > 1 ? wait - 1 : nil
            if wait == 1, let value = s.sessions[id] { s.sessions[id] = value + 1 }
        }
        var current = sid.flatMap { s.sessions[$0] }
        if isWrite, let id = sid, current != nil, fire(.applyLate, when: s.late[id] == nil) {
            s.late[id] = 2
            return unavailable(&s, write: true, cookie: nil)
        }
        if fire(.reset, when: (current ?? 0) >= 1) {
            s.sessions[sid!] = nil
            current = nil
        }
        guard isWrite else {
            if let c = current, fire(.staleRead, when: c >= 2) { return counter(c - 1) }
            return counter(current ?? 0)
        }
        if misbehavior.dedup, let key, let answered = s.answers[key] { return counter(answered) }
        var newCookie: String?
        if current == nil {
            s.nextSession += 1
            sid = "s\(s.nextSession)"
            newCookie = sid
        }
        var value = current ?? 0
        if fire(.loseUpdate, when: value >= 2) {
        } else if fire(.doubleApply, when: true) {
            value += 2
        } else {
            value += 1
        }
        s.sessions[sid!] = value
        if let key { s.answers[key] = value }
        if fire(.unavailableAfterApply, when: true) { return unavailable(&s, write: true, cookie: newCookie) }
        var response = counter(value)
        if let newCookie { response.headers.add(name: "Set-Cookie", value: "sid=\(newCookie); Path=/; HttpOnly") }
        return response
    }

    private func counter(_ count: Int) -> HTTPResponse {
        let node = Self.nodes[count % 2]
        var response = HTTPResponse.json("{\"node\":\"\(node)\",\"count\":\(count)}")
        response.headers.add(name: "X-Served-By", value: node)
        return response
    }

    private func unavailable(_ s: inout State, write: Bool, cookie: String?) -> HTTPResponse {
        if write { s.unavailableWrites += 1 }
        var response = HTTPResponse.error(status: 503, code: "unavailable", message: "misbehaving on purpose")
        if let cookie { response.headers.add(name: "Set-Cookie", value: "sid=\(cookie); Path=/; HttpOnly") }
        return response
    }
}

/// A quiet logger for the runner.
/// Runs the benchmark against `server` and returns its result.
func runBench(
    against server: CounterServer, users: Int = 4, maxRequests: Int? = 240, durationSeconds: Double? = 30,
    pacing: Pacing = .closedLoop(thinkTimeMillis: 0), faults: FaultPlan = FaultPlan(),
    injector: (any FaultInjector)? = nil, threads: Int = 1, bucketMillis: Int = 250, idempotencyKeys: Bool = true
) throws -> StrategyResult {
    let configuration = BenchConfiguration(
        target: try BenchTarget(baseURL: server.url), users: users, durationSeconds: durationSeconds,
        maxRequests: maxRequests, pacing: pacing, readEvery: 4, requestTimeoutMillis: 2_000, retryBackoffMillis: 1,
        threads: threads, bucketMillis: bucketMillis, faults: faults, idempotencyKeys: idempotencyKeys)
    let runner = try BenchRunner(configuration: configuration, injector: injector, logger: quietLogger())
    return runner.run(name: "test")
}
