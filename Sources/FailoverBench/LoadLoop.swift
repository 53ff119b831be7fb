#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MiniHTTP
import Synchronization
import SystemSupport

/// What the load loops of one run share.
final class RunContext: Sendable {
    let configuration: BenchConfiguration
    let recorder: Recorder
    let startNanos: Int64
    /// The end of the run's duration, if it has one.
    let endNanos: Int64?
    /// Prefix of the run's idempotency keys.
    let runID: String
    private let requestsLeft: Atomic<Int>
    let cancelled = Atomic<Bool>(false)
    /// The label of the last fault applied, for the progress line.
    let lastFault = Mutex<String?>(nil)

    init(configuration: BenchConfiguration, startNanos: Int64) {
        self.configuration = configuration
        self.startNanos = startNanos
        recorder = Recorder(startNanos: startNanos, bucketMillis: configuration.bucketMillis)
        endNanos = configuration.durationSeconds.map { startNanos + Int64($0 * 1e9) }
        runID = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        requestsLeft = Atomic(configuration.maxRequests ?? Int.max)
    }

    /// Takes the right to start one more request; false once `maxRequests` were started.
    func claimRequest() -> Bool { requestsLeft.subtract(1, ordering: .relaxed).oldValue > 0 }

    func shouldStop(_ now: Int64) -> Bool {
        cancelled.load(ordering: .relaxed) || (endNanos.map { now >= $0 } ?? false)
    }
}

/// One simulated user: its cookies, its checker, its connection and its request in flight.
struct SimulatedUser {
    enum Phase: Equatable {
        /// Nothing in flight; the next attempt starts at `until`.
        case waiting(until: Int64)
        case connecting
        case sending
        case receiving
        case finished
    }

    /// One logical request (a write and its retry share it).
    struct Request {
        var isWrite: Bool
        var key: String
        var attempt = 1
        /// Where its latency is measured from: the first send, or the intended send time.
        var originNanos: Int64
    }

    let index: Int
    var phase: Phase
    var jar = CookieJar()
    var checker = SessionChecker()
    var fd: Int32 = -1
    var parser = HTTPResponseParser()
    var request: Request?
    var output: [UInt8] = []
    var written = 0
    var head: HTTPResponseHead?
    var body: [UInt8] = []
    var deadline: Int64 = 0
    /// Requests started so far.
    var started = 0
    /// Fixed rate: when the next request is due.
    var nextDue: Int64
    var lastAnswer: Int64
    var failedSinceAnswer = false
    var longestGap: (nanos: Int64, end: Int64) = (0, 0)
}

/// Drives a share of the users with poll(): non-blocking keep-alive
/// connections, one request in flight per user. Runs on one thread.
final class LoadLoop {
    private let context: RunContext
    private let target: BenchTarget
    private let configuration: BenchConfiguration
    private var users: [SimulatedUser]
    private var buffer = [UInt8](repeating: 0, count: 65_536)
    private let timeoutNanos: Int64
    private let backoffNanos: Int64
    /// Fixed rate: the interval between two requests of one user.
    private let periodNanos: Int64?
    private static let maxBodyBytes = 1 << 20

    init(context: RunContext, userIndices: [Int]) {
        self.context = context
        configuration = context.configuration
        target = configuration.target
        timeoutNanos = Int64(configuration.requestTimeoutMillis) * 1_000_000
        backoffNanos = Int64(configuration.retryBackoffMillis) * 1_000_000
        let start = context.startNanos
        var offset: (Int) -> Int64 = { _ in 0 }
        if case .fixedRate(let rate) = configuration.pacing {
            periodNanos = Int64(Double(configuration.users) * 1e9 / rate)
            offset = { Int64(Double($0) * 1e9 / rate) }
        } else {
            periodNanos = nil
        }
        users = userIndices.map {
            SimulatedUser(index: $0, phase: .waiting(until: start + offset($0)), nextDue: start + offset($0), lastAnswer: start)
        }
    }

    /// Runs until every user is finished or the run stops; then closes every connection.
    /// Returns each user's session as it ended (users without a cookie left out).
    func run() -> [ConvergenceCheck.UserSession] {
        var pollfds: [pollfd] = []
        var owners: [Int] = []
        while true {
            let now = Int64(monotonicNanos())
            if context.shouldStop(now) { break }
            var wake = now + 20_000_000
            var active = false
            for i in users.indices {
                switch users[i].phase {
                case .finished:
                    continue
                case .waiting(let until):
                    active = true
                    if until <= now { begin(i, now: now) }
                default:
                    active = true
                    if users[i].deadline <= now { fail(i, "timeout", now: now, transport: true) }
                }
            }
            guard active else { break }
            pollfds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            for i in users.indices {
                let user = users[i]
                switch user.phase {
                case .waiting(let until): wake = min(wake, until)
                case .connecting, .sending:
                    pollfds.append(pollfd(fd: user.fd, events: Int16(POLLOUT), revents: 0))
                    owners.append(i)
                    wake = min(wake, user.deadline)
                case .receiving:
                    pollfds.append(pollfd(fd: user.fd, events: Int16(POLLIN), revents: 0))
                    owners.append(i)
                    wake = min(wake, user.deadline)
                case .finished: break
                }
            }
            let timeout = Int32(max(0, min(20, (wake - Int64(monotonicNanos()) + 999_999) / 1_000_000)))
            let n = pollfds.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), timeout) }
            guard n > 0 else { continue }
            let after = Int64(monotonicNanos())
            for (k, p) in pollfds.enumerated() where p.revents != 0 { handle(owners[k], now: after) }
        }
        let end = Int64(monotonicNanos())
        for i in users.indices {
            closeConnection(i)
            if users[i].failedSinceAnswer { noteGap(i, until: end) }
            let gap = users[i].longestGap
            if gap.nanos > 0 {
                context.recorder.gap(user: users[i].index, fromNanos: gap.end - gap.nanos, endNanos: gap.end)
            }
        }
        return users.compactMap { user in
            var checker = user.checker
            // A write cut short by the end of the run may still be applied: its outcome is unknown.
            if let request = user.request, request.isWrite, user.written > 0 || request.attempt > 1 { checker.writeFailed() }
            return user.jar.cookieHeader().map { ConvergenceCheck.UserSession(cookie: $0, checker: checker) }
        }
    }

    // MARK: - Requests

    /// Starts the next attempt: the pending retry, or a new request.
    private func begin(_ i: Int, now: Int64) {
        if users[i].request == nil {
            guard context.claimRequest() else {
                users[i].phase = .finished
                return
            }
            let n = users[i].started
            let isWrite = configuration.readEvery == 0 || n % configuration.readEvery != configuration.readEvery - 1
            var origin = now
            if let period = periodNanos {
                origin = users[i].nextDue
                users[i].nextDue += period
            }
            users[i].request = SimulatedUser.Request(
                isWrite: isWrite, key: isWrite ? "\(context.runID)-\(users[i].index)-\(n)" : "", originNanos: origin)
            users[i].started += 1
        }
        if users[i].fd >= 0 && !isReusable(users[i].fd) { closeConnection(i) }
        users[i].output = requestBytes(users[i])
        users[i].written = 0
        users[i].head = nil
        users[i].body = []
        users[i].deadline = now + timeoutNanos
        if users[i].fd < 0 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                fail(i, "socket", now: now, transport: true)
                return
            }
            users[i].fd = fd
            users[i].parser.reset()
            Sockets.setNoDelay(fd)
            let address = SocketAddress(host: target.host, port: target.port)!
            let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
            if rc != 0 {
                guard errno == EINPROGRESS else {
                    fail(i, "connect", now: now, transport: true)
                    return
                }
                users[i].phase = .connecting
                return
            }
            context.recorder.connectionOpened()
        }
        users[i].phase = .sending
        send(i, now: now)
    }

    private func requestBytes(_ user: SimulatedUser) -> [UInt8] {
        let request = user.request!
        let endpoint = request.isWrite ? target.write : target.read
        var text = "\(endpoint.method) \(target.requestTarget(endpoint)) HTTP/1.1\r\nHost: \(target.host):\(target.port)\r\n"
        text += "Accept: application/json\r\n"
        if let cookie = user.jar.cookieHeader() { text += "Cookie: \(cookie)\r\n" }
        if request.isWrite && configuration.idempotencyKeys { text += "\(target.idempotencyHeader): \(request.key)\r\n" }
        if endpoint.method != "GET" && endpoint.method != "HEAD" { text += "Content-Length: 0\r\n" }
        text += "\r\n"
        return Array(text.utf8)
    }

    /// A kept-alive connection is reused only when the server has not closed
    /// it (or sent something unasked) while it was idle.
    private func isReusable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN) | 0x2000 /* POLLRDHUP */, revents: 0)
        return Glibc.poll(&p, 1, 0) == 0
    }

    // MARK: - Socket events

    private func handle(_ i: Int, now: Int64) {
        switch users[i].phase {
        case .connecting:
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(users[i].fd, SOL_SOCKET, SO_ERROR, &error, &length)
            guard error == 0 else {
                fail(i, "connect", now: now, transport: true)
                return
            }
            context.recorder.connectionOpened()
            users[i].phase = .sending
            send(i, now: now)
        case .sending:
            send(i, now: now)
        case .receiving:
            receive(i, now: now)
        case .waiting, .finished:
            break
        }
    }

    private func send(_ i: Int, now: Int64) {
        let fd = users[i].fd
        while users[i].written < users[i].output.count {
            let n = users[i].output.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + users[i].written, raw.count - users[i].written, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                users[i].written += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return
            } else {
                fail(i, errno == ECONNRESET || errno == EPIPE ? "reset" : "send", now: now, transport: true)
                return
            }
        }
        users[i].phase = .receiving
    }

    private func receive(_ i: Int, now: Int64) {
        let fd = users[i].fd
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                users[i].parser.append(buffer[0..<n])
                if drain(i, now: now, atEnd: false) { return }
            } else if n == 0 {
                if !drain(i, now: now, atEnd: true) { fail(i, "closed", now: now, transport: true) }
                return
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                return
            } else {
                fail(i, errno == ECONNRESET ? "reset" : "recv", now: now, transport: true)
                return
            }
        }
    }

    /// Pulls parse events; true once the attempt is over (answered or failed).
    private func drain(_ i: Int, now: Int64, atEnd: Bool) -> Bool {
        do throws(HTTPParseError) {
            while let event = atEnd ? try users[i].parser.finish() : try users[i].parser.next() {
                switch event {
                case .head(let head):
                    for cookie in head.headers.values(of: "Set-Cookie") { users[i].jar.store(setCookie: cookie) }
                    if !head.isInterim { users[i].head = head }
                case .body(let bytes):
                    users[i].body += bytes
                    if users[i].body.count > Self.maxBodyBytes {
                        fail(i, "bad response", now: now, transport: true)
                        return true
                    }
                case .end:
                    guard let head = users[i].head else { continue }
                    complete(i, head: head, now: now)
                    return true
                }
            }
        } catch {
            fail(i, "bad response", now: now, transport: true)
            return true
        }
        return false
    }

    // MARK: - Outcomes

    private func complete(_ i: Int, head: HTTPResponseHead, now: Int64) {
        if !head.keepAlive || users[i].parser.bufferedByteCount > 0 { closeConnection(i) }
        guard (200..<300).contains(head.status) else {
            fail(i, "http \(head.status)", now: now, transport: false, retryable: head.status >= 500)
            return
        }
        let request = users[i].request!
        let json = try? JSONSerialization.jsonObject(with: Data(users[i].body), options: [.fragmentsAllowed])
        let count = json.flatMap { Self.lookup(target.countField, in: $0) }.flatMap(Self.integer)
        let kind = request.isWrite ? users[i].checker.checkWrite(count: count) : users[i].checker.checkRead(count: count)
        guard kind != .error else {
            // A 2xx without a usable count: the checker already counts the write as unconfirmed.
            fail(i, "bad answer", now: now, transport: false, retryable: false, counted: true)
            return
        }
        let node = head.headers[target.nodeHeader]
            ?? json.flatMap { Self.lookup(target.nodeField, in: $0) }.map { "\($0)" }
        context.recorder.record(RecordedAnswer(
            atNanos: now, kind: kind, latencyMicros: UInt64(max(0, now - request.originNanos) / 1000), node: node,
            errorKind: nil, isRetry: request.attempt > 1))
        noteGap(i, until: now)
        users[i].lastAnswer = now
        users[i].failedSinceAnswer = false
        scheduleNext(i, now: now, afterError: false)
    }

    /// Counts a failed attempt; with idempotency keys, a write's first attempt is retried (same key)
    /// after a transport error or a 5xx, anything else ends the request. Without keys a write is
    /// never retried; the checker takes it as maybe applied unless not a byte of it was sent.
    private func fail(
        _ i: Int, _ cause: String, now: Int64, transport: Bool, retryable: Bool = true, counted: Bool = false
    ) {
        let sent = users[i].written > 0
        if transport { closeConnection(i) }
        guard var request = users[i].request else { return }
        context.recorder.record(RecordedAnswer(
            atNanos: now, kind: .error, latencyMicros: nil, node: nil, errorKind: cause, isRetry: request.attempt > 1))
        if request.isWrite && request.attempt == 1 && retryable && configuration.idempotencyKeys {
            request.attempt = 2
            users[i].request = request
            users[i].phase = .waiting(until: now + backoffNanos)
            return
        }
        if request.isWrite && !counted && (configuration.idempotencyKeys || sent) { users[i].checker.writeFailed() }
        context.recorder.requestFailed()
        users[i].failedSinceAnswer = true
        scheduleNext(i, now: now, afterError: true)
    }

    private func scheduleNext(_ i: Int, now: Int64, afterError: Bool) {
        users[i].request = nil
        switch configuration.pacing {
        case .closedLoop(let think):
            users[i].phase = .waiting(until: now + max(Int64(think) * 1_000_000, afterError ? backoffNanos : 0))
        case .fixedRate:
            users[i].phase = .waiting(until: users[i].nextDue)
        }
    }

    private func noteGap(_ i: Int, until end: Int64) {
        let gap = end - users[i].lastAnswer
        if gap > users[i].longestGap.nanos { users[i].longestGap = (gap, end) }
    }

    private func closeConnection(_ i: Int) {
        guard users[i].fd >= 0 else { return }
        close(users[i].fd)
        users[i].fd = -1
        users[i].parser.reset()
    }

    // MARK: - JSON

    /// The value at a dotted path (`count`, `session.count`).
    static func lookup(_ path: String, in json: Any) -> Any? {
        var value: Any? = json
        for key in path.split(separator: ".") {
            value = (value as? [String: Any])?[String(key)]
        }
        return value
    }

    /// An integer from a JSON number (integral) or a numeric string.
    static func integer(_ value: Any) -> Int? {
        if let s = value as? String { return Int(s) }
        if let n = value as? NSNumber {
            let d = n.doubleValue
            return d.rounded() == d && abs(d) < 1e15 ? Int(d) : nil
        }
        return nil
    }
}
