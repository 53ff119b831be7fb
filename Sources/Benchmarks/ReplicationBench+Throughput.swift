#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Histogram
import Logging
import MiniHTTP
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport

// Requests/s round robin through running nodes, populating a node, waiting for one to be ready.
extension ReplicationBench {
    // MARK: - Throughput

    public func measureThroughput(endpoints: [BenchEndpoint]) throws {
        let results = Mutex(ThroughputOutcome())
        let start = monotonicNanos()
        let (measureFrom, measureUntil) = window.bounds(startingAt: start)
        let verifyAt = measureUntil + 300_000_000  // let the last replications land
        runThreads(connections) { _ in
            var local = ThroughputOutcome()
            var user = BenchUser(endpoints: endpoints)
            var k = 0
            while true {
                let began = monotonicNanos()
                if began >= measureUntil { break }
                let node = k % endpoints.count
                k += 1
                let outcome = user.post(node: node)
                let ended = monotonicNanos()
                local.record(outcome)
                if case .failed = outcome { usleep(1_000) }  // do not spin on a dead node
                // Only answered POSTs that ended inside the window count (failures are reported apart).
                if ended >= measureFrom && ended <= measureUntil, case .ok = outcome {
                    local.windowRequests += 1
                    local.histogram.record(min((ended - began) / 1_000, ThroughputOutcome.highestMicros))
                }
            }
            // Every node must end with all of the user's increments (no read token: its own copy).
            let now = monotonicNanos()
            if now < verifyAt { usleep(UInt32((verifyAt - now) / 1_000)) }
            local.verify(&user)
            results.withLock { $0.merge(local) }
        }
        let outcome = results.withLock { $0 }
        let seconds = Double(measureUntil - measureFrom) / 1e9
        let rate = Double(outcome.windowRequests) / seconds
        let h = outcome.histogram
        func ms(_ p: Double) -> String {
            h.totalCount == 0 ? "null" : fixed(Double(h.valueAtPercentile(p)) / 1_000, 3)
        }
        let maxMs = h.totalCount == 0 ? "null" : fixed(Double(h.max) / 1_000, 3)
        let statuses = outcome.statuses.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }
            .joined(separator: ",")
        var json = [
            "\"measurement\":\"throughput\"", "\"requests_per_s\":\(fixed(rate, 1))",
            "\"p50_ms\":\(ms(50))", "\"p90_ms\":\(ms(90))", "\"p99_ms\":\(ms(99))", "\"max_ms\":\(maxMs)",
            "\"requests\":\(outcome.windowRequests)", "\"seconds\":\(fixed(seconds, 3))",
            "\"users\":\(connections)", "\"nodes\":\(endpoints.count)",
            "\"total_posts\":\(outcome.posts)", "\"stale\":\(outcome.stale)", "\"ahead\":\(outcome.ahead)",
            "\"failed\":\(outcome.failed)", "\"non_200\":\(outcome.non200)", "\"statuses\":{\(statuses)}",
            "\"uncertain_users\":\(outcome.uncertainUsers)", "\"checked\":\(outcome.checked)",
            "\"converged\":\(outcome.converged)", "\"lost\":\(outcome.lost)", "\"extra\":\(outcome.extra)",
            "\"check_failed\":\(outcome.checkFailed)",
        ]
        if let first = outcome.firstError { json.append("\"first_error\":\(jsonQuoted(first))") }
        print("{" + json.joined(separator: ",") + "}")
        print(
            "throughput: \(fixed(rate, 1)) POST /api/counter/s over \(fixed(seconds, 1)) s through "
                + "\(endpoints.count) nodes round robin, \(connections) users; latency p50 \(ms(50)) ms, "
                + "p99 \(ms(99)) ms, max \(maxMs) ms")
        print(
            "throughput: checked \(outcome.posts) responses: \(outcome.stale) stale (count below the user's POSTs), "
                + "\(outcome.ahead) ahead, \(outcome.failed) failed, \(outcome.non200) non-200; final copies "
                + "\(outcome.converged)/\(outcome.checked) complete, \(outcome.lost) missing increments, "
                + "\(outcome.extra) with extra, \(outcome.checkFailed) unreadable"
                + (outcome.uncertainUsers > 0 ? "; \(outcome.uncertainUsers) users not checked (a request failed)" : "")
                + (outcome.firstError.map { "; first error: \($0)" } ?? ""))
        fflush(nil)
    }

    // MARK: - Populate

    public func populateSessions(endpoint: BenchEndpoint) throws {
        let threads = min(connections, sessions)
        let totals = Mutex((created: 0, failed: 0, firstError: String?.none))
        let sample = Mutex((cookie: String?.none, count: Int64(0)))
        let sessions = sessions
        let samplePosts = samplePosts
        let began = monotonicNanos()
        runThreads(threads) { t in
            let connection = HTTPClientConnection(host: endpoint.host, port: endpoint.port)
            var created = 0
            var failed = 0
            var firstError: String?
            for i in stride(from: t, to: sessions, by: threads) {
                do {
                    let response = try connection.postCounter(cookies: [:])
                    guard response.status == 200, let sid = response.cookies["sid"], !sid.isEmpty,
                        response.count == 1
                    else {
                        throw BenchFailure(
                            "POST /api/counter: status \(response.status), count \(response.count.map(String.init) ?? "?")")
                    }
                    created += 1
                    if i == 0 {
                        var cookies = response.cookies
                        var count: Int64 = 1
                        for _ in 1..<samplePosts {
                            let next = try connection.postCounter(cookies: cookies)
                            guard next.status == 200, let n = next.count else {
                                throw BenchFailure("sample POST: status \(next.status)")
                            }
                            cookies.merge(next.cookies) { $1 }
                            count = n
                        }
                        sample.withLock { $0 = (sid, count) }
                    }
                } catch {
                    failed += 1
                    if firstError == nil { firstError = "\(error)" }
                    usleep(1_000)
                }
            }
            totals.withLock {
                $0.created += created
                $0.failed += failed
                if $0.firstError == nil { $0.firstError = firstError }
            }
        }
        let millis = Double(monotonicNanos() - began) / 1e6
        let (created, failed, firstError) = totals.withLock { ($0.created, $0.failed, $0.firstError) }
        let (cookie, count) = sample.withLock { ($0.cookie, $0.count) }
        let rate = millis > 0 ? Double(created) / (millis / 1_000) : 0
        var json = [
            "\"measurement\":\"populate\"", "\"created\":\(created)", "\"failed\":\(failed)",
            "\"millis\":\(fixed(millis, 1))", "\"per_s\":\(fixed(rate, 1))",
            "\"connections\":\(threads)",
        ]
        if let cookie {
            json.append("\"sample_sid\":\(jsonQuoted(cookie))")
            json.append("\"sample_count\":\(count)")
        }
        if let firstError { json.append("\"first_error\":\(jsonQuoted(firstError))") }
        print("{" + json.joined(separator: ",") + "}")
        print(
            "populate: \(created) sessions created through \(endpoint) in \(fixed(millis, 0)) ms "
                + "(\(fixed(rate, 0))/s, \(threads) keep-alive connections), \(failed) failed"
                + (cookie == nil ? "" : "; sample session has count \(count)")
                + (firstError.map { "; first error: \($0)" } ?? ""))
        fflush(nil)
        guard created == sessions, cookie != nil else {
            throw BenchFailure("populate: only \(created) of \(sessions) sessions were created")
        }
    }

    // MARK: - Wait ready

    public func waitUntilReady(endpoint: BenchEndpoint) throws {
        let origin = sinceEpochMicros.map { UInt64(max(0, $0)) * 1_000 } ?? wallClockNanos()
        let deadline = monotonicNanos() + UInt64(timeout * 1e9)
        let connection = HTTPClientConnection(host: endpoint.host, port: endpoint.port, timeoutMillis: 1_000)
        var polls = 0
        var refused = 0
        var lastStatus = 0
        while true {
            polls += 1
            do {
                let response = try connection.request("GET", "/healthz")
                lastStatus = response.status
                if response.status == 200 { break }
            } catch {
                refused += 1
            }
            guard monotonicNanos() < deadline else {
                throw BenchFailure(
                    "\(endpoint)/healthz did not answer 200 within \(timeout) s (last status \(lastStatus))")
            }
            usleep(2_000)
        }
        let now = wallClockNanos()
        let millis = now > origin ? Double(now - origin) / 1e6 : 0
        print(
            "{\"measurement\":\"wait_ready\",\"millis\":\(fixed(millis, 1)),\"polls\":\(polls),"
                + "\"unreachable_polls\":\(refused)}")
        print(
            "wait-ready: \(endpoint)/healthz answered 200 after \(fixed(millis, 1)) ms "
                + "(\(polls) polls, \(refused) while not listening yet)")
        fflush(nil)
    }
}

// MARK: - Throughput bookkeeping

/// One simulated user: its cookies, one keep-alive connection per node, and its POST count.
private struct BenchUser {
    enum Outcome {
        case ok(count: Int64, expected: Int64)
        case status(Int)
        case failed(String)
    }

    let connections: [HTTPClientConnection]
    let endpoints: [BenchEndpoint]
    var cookies: [String: String] = [:]
    /// POSTs answered 200: what the session's count must be.
    var posts: Int64 = 0
    /// A request failed or was refused: it may or may not have counted, so this user is not checked.
    var uncertain = false

    init(endpoints: [BenchEndpoint]) {
        self.endpoints = endpoints
        connections = endpoints.map { HTTPClientConnection(host: $0.host, port: $0.port) }
    }

    mutating func post(node: Int) -> Outcome {
        let response: HTTPClientConnection.Response
        do {
            response = try connections[node].postCounter(cookies: cookies)
        } catch {
            uncertain = true
            return .failed("\(endpoints[node]): \(error)")
        }
        guard response.status == 200 else {
            uncertain = true
            return .status(response.status)
        }
        for (name, value) in response.cookies {
            cookies[name] = value.isEmpty ? nil : value
        }
        posts += 1
        return .ok(count: response.count ?? -1, expected: posts)
    }

    /// The count `node` holds for this session, without a read token; nil when unreadable.
    mutating func count(on node: Int) -> Int64? {
        guard let sid = cookies["sid"] else { return nil }
        guard let response = try? connections[node].request("GET", "/api/session", headers: [("Cookie", "sid=\(sid)")]),
            response.status == 200
        else { return nil }
        return response.count
    }
}

private struct ThroughputOutcome: Sendable {
    static let highestMicros: UInt64 = 60_000_000

    var windowRequests = 0
    var posts = 0
    var stale = 0
    var ahead = 0
    var failed = 0
    var non200 = 0
    var statuses: [Int: Int] = [:]
    var firstError: String?
    var uncertainUsers = 0
    var checked = 0
    var converged = 0
    var lost = 0
    var extra = 0
    var checkFailed = 0
    var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: highestMicros, numberOfSignificantValueDigits: .three)

    mutating func record(_ outcome: BenchUser.Outcome) {
        switch outcome {
        case .ok(let count, let expected):
            posts += 1
            if count < expected { stale += 1 } else if count > expected { ahead += 1 }
        case .status(let status):
            non200 += 1
            statuses[status, default: 0] += 1
            if firstError == nil { firstError = "HTTP status \(status)" }
        case .failed(let message):
            failed += 1
            if firstError == nil { firstError = message }
        }
    }

    /// Reads the session on every node; retries for up to 2 s while a copy is behind.
    mutating func verify(_ user: inout BenchUser) {
        guard !user.uncertain else {
            uncertainUsers += 1
            return
        }
        guard user.posts > 0 else { return }
        for node in 0..<user.endpoints.count {
            checked += 1
            let deadline = monotonicNanos() + 2_000_000_000
            var count = user.count(on: node)
            while count.map({ $0 < user.posts }) ?? true, monotonicNanos() < deadline {
                usleep(10_000)
                count = user.count(on: node)
            }
            guard let count else {
                checkFailed += 1
                continue
            }
            if count == user.posts {
                converged += 1
            } else if count < user.posts {
                lost += Int(user.posts - count)
            } else {
                extra += 1
            }
        }
    }

    mutating func merge(_ other: ThroughputOutcome) {
        windowRequests += other.windowRequests
        posts += other.posts
        stale += other.stale
        ahead += other.ahead
        failed += other.failed
        non200 += other.non200
        statuses.merge(other.statuses, uniquingKeysWith: +)
        if firstError == nil { firstError = other.firstError }
        uncertainUsers += other.uncertainUsers
        checked += other.checked
        converged += other.converged
        lost += other.lost
        extra += other.extra
        checkFailed += other.checkFailed
        histogram.add(other.histogram)
    }
}

/// A node's address, from `http://host:port` (a path is ignored).
public struct BenchEndpoint: Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(_ url: String) throws(BenchFailure) {
        var rest = Substring(url)
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port)
        else { throw BenchFailure("'\(url)' is not http://host:port") }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw BenchFailure("'\(url)' has no host") }
        self.host = host
        self.port = port
    }

    /// A comma-separated list.
    public static func list(_ text: String) throws(BenchFailure) -> [BenchEndpoint] {
        try text.split(separator: ",").map { part throws(BenchFailure) in try BenchEndpoint(String(part)) }
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension HTTPClientConnection {
    /// POST /api/counter with these cookies (none: a new session).
    fileprivate func postCounter(cookies: [String: String]) throws(HTTPClientError) -> Response {
        let cookie = cookies.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")
        return try request("POST", "/api/counter", headers: cookies.isEmpty ? [] : [("Cookie", cookie)])
    }
}

extension HTTPClientConnection.Response {
    /// Set-Cookie name → value ("" for an expired cookie).
    fileprivate var cookies: [String: String] {
        var cookies: [String: String] = [:]
        for value in head.headers.values(of: "Set-Cookie") {
            let pair = value.prefix { $0 != ";" }
            if let eq = pair.firstIndex(of: "=") { cookies[String(pair[..<eq])] = String(pair[pair.index(after: eq)...]) }
        }
        return cookies
    }

    /// The integer after "count": in the JSON body.
    fileprivate var count: Int64? {
        let key = Array("\"count\":".utf8)
        guard body.count > key.count else { return nil }
        for start in 0...(body.count - key.count) where body[start] == key[0] {
            guard Array(body[start..<start + key.count]) == key else { continue }
            var i = start + key.count
            while i < body.count && body[i] == 32 { i += 1 }
            var value: Int64 = 0
            var digits = 0
            while i < body.count, body[i] >= 48, body[i] <= 57 {
                value = value &* 10 &+ Int64(body[i] - 48)
                digits += 1
                i += 1
            }
            return digits > 0 ? value : nil
        }
        return nil
    }
}
