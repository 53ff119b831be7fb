import ArgumentParser
import Dispatch
import Histogram
import Logging
import MiniHTTP
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

extension SessionClusterCommand {
    /// The replicate strategy's numbers (issue 4): replication lag, requests/s
    /// through three nodes, and helpers for the restart-to-ready measurement
    /// that scripts/bench-replication.sh orchestrates.
    struct BenchReplication: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-replication",
            abstract: "Measure the replicate strategy: replication lag, requests/s through nodes, restart helpers.",
            discussion: """
                --lag: in-process, over loopback TCP: --lag-nodes ReplicationNodes (async mode, real \
                sockets on 127.0.0.1) in this process; --samples writes on the first node, one every \
                --interval-us at most, each timed from before `apply` on node A until node B's copy \
                shows it (and until every peer's does). Prints p50/p99/p99.9/max in microseconds.

                --throughput --nodes URL,URL,URL: --connections simulated users, each with its own \
                cookies and one keep-alive connection per node; request k of a user goes to node \
                k % nodes. POST /api/counter flat-out for --warmup + --duration seconds; every \
                response's count is checked against the user's number of POSTs, and at the end every \
                node's copy of every session (GET /api/session, no read token) must show all of them.

                --populate URL: creates --sessions sessions (one POST /api/counter without a cookie \
                each) over --connections keep-alive connections; the first one gets --sample-posts \
                POSTs in all and its cookie is printed, to check a restarted node with.

                --wait-ready URL: polls URL/healthz every 2 ms; prints the milliseconds until 200, \
                counted from --since-epoch-us (e.g. ${EPOCHREALTIME/./} taken just before starting \
                the node) or from its own start.

                Each measurement prints a JSON line (for scripts) and a line for people.
                """)

        // MARK: --lag

        @Flag(help: "Measure replication lag in-process, over loopback TCP.")
        var lag = false

        @Option(help: "Lag: measured writes.")
        var samples = 20_000

        @Option(help: "Lag: unmeasured writes first.")
        var warmupSamples = 2_000

        @Option(name: .customLong("interval-us"), help: "Lag: one write every this many microseconds at most.")
        var intervalMicros = 100

        @Option(help: "Lag: replication nodes in the process (2 or 3).")
        var lagNodes = 3

        // MARK: --throughput

        @Flag(help: "Measure POST /api/counter requests/s round robin through --nodes.")
        var throughput = false

        @Option(help: "Throughput: the nodes' base URLs, http://host:port,...")
        var nodes: String?

        @OptionGroup var window: MeasurementWindow

        @Option(help: "Throughput: simulated users (one thread each); populate: connections.")
        var connections = 32

        // MARK: --populate, --wait-ready

        @Option(help: "Create --sessions sessions through this node (base URL).")
        var populate: String?

        @Option(help: "Populate: sessions to create.")
        var sessions = 10_000

        @Option(help: "Populate: POSTs in all for the first session (the sample).")
        var samplePosts = 5

        @Option(help: "Poll this node's (base URL) /healthz every 2 ms until 200.")
        var waitReady: String?

        @Option(name: .customLong("since-epoch-us"), help: "Wait-ready: count from this instant (µs since 1970).")
        var sinceEpochMicros: Int64?

        @Option(help: "Wait-ready: give up after this many seconds.")
        var timeout: Double = 60

        @Option(help: "Log level of the in-process nodes: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "warning"

        func validate() throws {
            guard lag || throughput || populate != nil || waitReady != nil else {
                throw ValidationError("choose at least one of --lag, --throughput, --populate URL, --wait-ready URL")
            }
            guard (1...10_000_000).contains(samples) else { throw ValidationError("--samples must be 1...10000000") }
            guard (0...10_000_000).contains(warmupSamples) else {
                throw ValidationError("--warmup-samples must be 0...10000000")
            }
            guard (0...1_000_000).contains(intervalMicros) else {
                throw ValidationError("--interval-us must be 0...1000000")
            }
            guard (2...3).contains(lagNodes) else { throw ValidationError("--lag-nodes must be 2 or 3") }
            guard (1...4096).contains(connections) else { throw ValidationError("--connections must be 1...4096") }
            guard (1...10_000_000).contains(sessions) else { throw ValidationError("--sessions must be 1...10000000") }
            guard (1...1_000_000).contains(samplePosts) else { throw ValidationError("--sample-posts must be 1...1000000") }
            guard timeout > 0, timeout <= 3_600 else { throw ValidationError("--timeout must be in (0, 3600]") }
            guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
            if throughput {
                guard let nodes, !(try BenchEndpoint.list(nodes)).isEmpty else {
                    throw ValidationError("--throughput needs --nodes URL,URL,...")
                }
            }
            if let populate { _ = try BenchEndpoint(populate) }
            if let waitReady { _ = try BenchEndpoint(waitReady) }
        }

        func run() throws {
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            var logger = Logger(label: "bench-replication")
            logger.logLevel = Logger.Level(rawValue: logLevel) ?? .warning
            if lag { try measureLag(logger: logger) }
            if throughput, let nodes { try measureThroughput(endpoints: try BenchEndpoint.list(nodes)) }
            if let populate { try populateSessions(endpoint: try BenchEndpoint(populate)) }
            if let waitReady { try waitUntilReady(endpoint: try BenchEndpoint(waitReady)) }
        }

        // MARK: - Lag

        private func measureLag(logger: Logger) throws {
            let secret = Array("bench-replication in-process secret".utf8)
            let names = ["lag-a", "lag-b", "lag-c"].prefix(lagNodes)
            // Peers must be known before the nodes bind: reserve free ports, then let the nodes bind them.
            var replicationNodes: [ReplicationNode] = []
            for attempt in 1...5 {
                let ports = try names.map { _ in try Sockets.freeLoopbackPort() }
                let peers = ports.map { PeerAddress(host: "127.0.0.1", port: $0) }
                do {
                    replicationNodes = try zip(names, ports).map { name, port in
                        let configuration = ReplicationConfiguration(
                            nodeName: name, host: "127.0.0.1", port: port, peers: peers, secret: secret, mode: .async)
                        let store = ReplicatedSessionStore(node: configuration.nodeID)
                        return try ReplicationNode(store: store, configuration: configuration, logger: logger)
                    }
                    break
                } catch {
                    for node in replicationNodes { node.shutdown() }
                    replicationNodes = []
                    if attempt == 5 { throw BenchReplicationFailure("cannot bind the in-process nodes: \(error)") }
                }
            }
            let all = replicationNodes
            defer { for node in all { node.shutdown() } }
            for node in all { node.start() }
            let deadline = monotonicNanos() + 10_000_000_000
            while !all.allSatisfy({ $0.isReady && $0.peers.allSatisfy(\.connected) }) {
                guard monotonicNanos() < deadline else {
                    throw BenchReplicationFailure("the in-process nodes did not connect to each other within 10 s")
                }
                usleep(1_000)
            }
            let a = all[0]
            let b = all[1]
            let others = Array(all.dropFirst())

            // A few sessions in turn; each write increments one of them on A.
            let ids = (0..<64).map { _ in SessionID.generate() }
            var created = Set<Int>()
            var first = Histogram<UInt64>(
                lowestDiscernibleValue: 1, highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
            var every = first
            var timeouts = 0
            let interval = UInt64(intervalMicros) * 1_000
            let total = warmupSamples + samples
            var nextStart = monotonicNanos()
            var measuredStart = nextStart
            for i in 0..<total {
                if i == warmupSamples { measuredStart = monotonicNanos() }
                // Pace: sleep most of the gap, yield the rest.
                while true {
                    let now = monotonicNanos()
                    if now >= nextStart { break }
                    if nextStart - now > 200_000 { usleep(UInt32((nextStart - now - 100_000) / 1_000)) } else { sched_yield() }
                }
                let slot = i % ids.count
                let id = ids[slot]
                let delta = SessionDelta(
                    id: id, changes: [.increment("count", by: 1)], createIfMissing: !created.contains(slot))
                let began = monotonicNanos()
                nextStart = began + interval
                guard let applied = try a.store.apply(delta) else {
                    throw BenchReplicationFailure("apply on node A returned nil for sample \(i)")
                }
                created.insert(slot)
                // Spin (yielding the CPU: this machine may have few cores) until B, then every peer, has it.
                var firstNanos: UInt64?
                var pending = others
                let giveUp = began + 1_000_000_000
                while !pending.isEmpty {
                    pending.removeAll { ($0.store.fullState(of: id)?.state.version.packedVersion ?? 0) >= applied.version }
                    let now = monotonicNanos()
                    if firstNanos == nil, !pending.contains(where: { $0 === b }) { firstNanos = now - began }
                    if pending.isEmpty {
                        if i >= warmupSamples {
                            first.record(firstNanos ?? now - began)
                            every.record(now - began)
                        }
                        break
                    }
                    if now >= giveUp {
                        if i >= warmupSamples { timeouts += 1 }
                        break
                    }
                    sched_yield()
                }
            }
            let seconds = Double(monotonicNanos() - measuredStart) / 1e9
            let counters = a.counters
            let receivedByPeers = others.map(\.counters.itemsReceived).reduce(0, +)
            func us(_ h: Histogram<UInt64>, _ p: Double) -> String {
                h.totalCount == 0 ? "null" : fixed(Double(h.valueAtPercentile(p)) / 1_000, 1)
            }
            func maxUs(_ h: Histogram<UInt64>) -> String {
                h.totalCount == 0 ? "null" : fixed(Double(h.max) / 1_000, 1)
            }
            print(
                "{\"measurement\":\"lag\",\"p50_us\":\(us(first, 50)),\"p90_us\":\(us(first, 90)),"
                    + "\"p99_us\":\(us(first, 99)),\"p999_us\":\(us(first, 99.9)),\"max_us\":\(maxUs(first)),"
                    + "\"all_p50_us\":\(us(every, 50)),\"all_p99_us\":\(us(every, 99)),"
                    + "\"all_p999_us\":\(us(every, 99.9)),\"all_max_us\":\(maxUs(every)),"
                    + "\"samples\":\(first.totalCount),\"timeouts\":\(timeouts),\"nodes\":\(lagNodes),"
                    + "\"interval_us\":\(intervalMicros),\"seconds\":\(fixed(seconds, 3)),"
                    + "\"items_sent\":\(counters.itemsSent),\"items_received_by_peers\":\(receivedByPeers),"
                    + "\"queue_overflows\":\(counters.queueOverflows),\"resyncs\":\(counters.resyncs)}")
            print(
                "lag (in-process, \(lagNodes) ReplicationNodes over loopback TCP on 127.0.0.1, async mode, "
                    + "\(first.totalCount) writes, one per \(intervalMicros) us at most): write on A until visible on B: "
                    + "p50 \(us(first, 50)) us, p99 \(us(first, 99)) us, p99.9 \(us(first, 99.9)) us, max \(maxUs(first)) us"
                    + (lagNodes > 2
                        ? "; until visible on every peer: p50 \(us(every, 50)) us, p99 \(us(every, 99)) us, "
                            + "p99.9 \(us(every, 99.9)) us, max \(maxUs(every)) us" : "")
                    + "; \(timeouts) not visible within 1 s")
            fflush(nil)
        }

        // MARK: - Throughput

        private func measureThroughput(endpoints: [BenchEndpoint]) throws {
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

        private func populateSessions(endpoint: BenchEndpoint) throws {
            let threads = min(connections, sessions)
            let totals = Mutex((created: 0, failed: 0, firstError: String?.none))
            let sample = Mutex((cookie: String?.none, count: Int64(0)))
            let sessions = sessions
            let samplePosts = samplePosts
            let began = monotonicNanos()
            runThreads(threads) { t in
                var connection = BenchHTTPConnection(endpoint: endpoint)
                var created = 0
                var failed = 0
                var firstError: String?
                for i in stride(from: t, to: sessions, by: threads) {
                    do {
                        let response = try connection.send(benchPost(endpoint, cookies: [:]))
                        guard response.status == 200, let sid = response.cookies["sid"], !sid.isEmpty,
                            response.count == 1
                        else {
                            throw BenchHTTPError(
                                "POST /api/counter: status \(response.status), count \(response.count.map(String.init) ?? "?")")
                        }
                        created += 1
                        if i == 0 {
                            var cookies = response.cookies
                            var count: Int64 = 1
                            for _ in 1..<samplePosts {
                                let next = try connection.send(benchPost(endpoint, cookies: cookies))
                                guard next.status == 200, let n = next.count else {
                                    throw BenchHTTPError("sample POST: status \(next.status)")
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
                throw BenchReplicationFailure("populate: only \(created) of \(sessions) sessions were created")
            }
        }

        // MARK: - Wait ready

        private func waitUntilReady(endpoint: BenchEndpoint) throws {
            let origin = sinceEpochMicros.map { UInt64(max(0, $0)) * 1_000 } ?? wallClockNanos()
            let deadline = monotonicNanos() + UInt64(timeout * 1e9)
            var connection = BenchHTTPConnection(endpoint: endpoint, timeoutMillis: 1_000)
            let request = Array("GET /healthz HTTP/1.1\r\nHost: \(endpoint)\r\n\r\n".utf8)
            var polls = 0
            var refused = 0
            var lastStatus = 0
            while true {
                polls += 1
                do {
                    let response = try connection.send(request)
                    lastStatus = response.status
                    if response.status == 200 { break }
                } catch {
                    refused += 1
                }
                guard monotonicNanos() < deadline else {
                    throw BenchReplicationFailure(
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
}

// MARK: - Throughput bookkeeping

/// One simulated user: its cookies, one keep-alive connection per node, and its POST count.
private struct BenchUser {
    enum Outcome {
        case ok(count: Int64, expected: Int64)
        case status(Int)
        case failed(String)
    }

    var connections: [BenchHTTPConnection]
    let endpoints: [BenchEndpoint]
    var cookies: [String: String] = [:]
    /// POSTs answered 200: what the session's count must be.
    var posts: Int64 = 0
    /// A request failed or was refused: it may or may not have counted, so this user is not checked.
    var uncertain = false

    init(endpoints: [BenchEndpoint]) {
        self.endpoints = endpoints
        connections = endpoints.map { BenchHTTPConnection(endpoint: $0) }
    }

    mutating func post(node: Int) -> Outcome {
        let response: BenchResponse
        do {
            response = try connections[node].send(benchPost(endpoints[node], cookies: cookies))
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
        let request = Array(
            "GET /api/session HTTP/1.1\r\nHost: \(endpoints[node])\r\nCookie: sid=\(sid)\r\n\r\n".utf8)
        guard let response = try? connections[node].send(request), response.status == 200 else { return nil }
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

// MARK: - A minimal HTTP/1.1 client

/// A node's base URL: http://host:port (IPv4, or [IPv6]); any path is ignored.
private struct BenchEndpoint: Sendable, CustomStringConvertible {
    var host: String
    var port: Int

    init(_ url: String) throws(ValidationError) {
        var rest = Substring(url)
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port)
        else { throw ValidationError("'\(url)' is not http://host:port") }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw ValidationError("'\(url)' has no host") }
        self.host = host
        self.port = port
    }

    static func list(_ text: String) throws(ValidationError) -> [BenchEndpoint] {
        try text.split(separator: ",").map { part throws(ValidationError) in try BenchEndpoint(String(part)) }
    }

    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

private struct BenchHTTPError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

private struct BenchResponse {
    var status: Int
    var body: [UInt8]
    /// Set-Cookie name → value ("" for an expired cookie).
    var cookies: [String: String]

    /// The integer after "count": in the JSON body.
    var count: Int64? {
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

/// POST /api/counter with the given cookies (none: a new session).
private func benchPost(_ endpoint: BenchEndpoint, cookies: [String: String]) -> [UInt8] {
    var head = "POST /api/counter HTTP/1.1\r\nHost: \(endpoint)\r\nContent-Length: 0\r\n"
    if !cookies.isEmpty {
        head += "Cookie: " + cookies.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")
            + "\r\n"
    }
    return Array((head + "\r\n").utf8)
}

/// One keep-alive connection, opened on first use and after any failure;
/// blocking reads with a timeout; responses framed by Content-Length only.
private struct BenchHTTPConnection {
    let endpoint: BenchEndpoint
    let timeoutMillis: Int
    private var fd: Int32 = -1
    private var buffer: [UInt8] = []
    private var scratch = [UInt8](repeating: 0, count: 16 * 1024)

    init(endpoint: BenchEndpoint, timeoutMillis: Int = 5_000) {
        self.endpoint = endpoint
        self.timeoutMillis = timeoutMillis
    }

    mutating func disconnect() {
        if fd >= 0 { close(fd) }
        fd = -1
        buffer.removeAll(keepingCapacity: true)
    }

    /// Sends one request and reads its response; on any failure the connection is closed and the error thrown.
    mutating func send(_ request: [UInt8]) throws(BenchHTTPError) -> BenchResponse {
        if fd < 0 {
            do {
                fd = try Sockets.connect(host: endpoint.host, port: endpoint.port, timeoutMillis: Int32(timeoutMillis))
            } catch {
                throw BenchHTTPError("\(error)")
            }
            Sockets.setReceiveTimeout(fd, millis: timeoutMillis)
            Sockets.setSendTimeout(fd, millis: timeoutMillis)
        }
        guard Sockets.writeAll(fd, request) else {
            let e = errno
            disconnect()
            throw BenchHTTPError("send failed: errno \(e)")
        }
        do {
            let (response, keepAlive) = try readResponse()
            if !keepAlive { disconnect() }
            return response
        } catch {
            disconnect()
            throw error
        }
    }

    private mutating func readResponse() throws(BenchHTTPError) -> (BenchResponse, keepAlive: Bool) {
        var searchFrom = 0
        var headEnd = -1
        while headEnd < 0 {
            if buffer.count >= 4 {
                for i in searchFrom...(buffer.count - 4)
                where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
                    headEnd = i
                    break
                }
                searchFrom = max(0, buffer.count - 3)
            }
            if headEnd < 0 {
                guard buffer.count < 64 * 1024 else { throw BenchHTTPError("response head over 64 KiB") }
                try fill()
            }
        }
        let head = String(decoding: buffer[..<headEnd], as: UTF8.self)
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw BenchHTTPError("bad status line '\(lines[0])'")
        }
        var length = 0
        var keepAlive = statusParts[0] == "HTTP/1.1"
        var cookies: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = String(line[line.index(after: colon)...].drop(while: { $0 == " " }))
            switch name {
            case "content-length":
                guard let n = Int(value), n >= 0 else { throw BenchHTTPError("bad Content-Length '\(value)'") }
                length = n
            case "connection":
                if value.lowercased().contains("close") { keepAlive = false }
            case "set-cookie":
                let pair = value.prefix { $0 != ";" }
                if let eq = pair.firstIndex(of: "=") {
                    cookies[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
                }
            case "transfer-encoding":
                throw BenchHTTPError("chunked responses are not supported")
            default:
                break
            }
        }
        let bodyStart = headEnd + 4
        while buffer.count < bodyStart + length { try fill() }
        let body = Array(buffer[bodyStart..<bodyStart + length])
        buffer.removeFirst(bodyStart + length)
        return (BenchResponse(status: status, body: body, cookies: cookies), keepAlive)
    }

    private mutating func fill() throws(BenchHTTPError) {
        let fd = fd
        while true {
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: scratch[0..<n])
                return
            }
            if n == 0 { throw BenchHTTPError("connection closed by the node") }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { throw BenchHTTPError("no response within \(timeoutMillis) ms") }
            throw BenchHTTPError("recv failed: errno \(e)")
        }
    }
}

// MARK: - Helpers

private struct BenchReplicationFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}


