import Dispatch
import Foundation
import SessionCore
import SessionRedis
import Synchronization
import Testing
import TestSupport
import SystemSupport

/// Redis Sentinel failover under traffic, started and killed by the test:
/// one master, one replica, one sentinel, each a private process on a free
/// loopback port. The master is SIGKILLed while several threads use a
/// `RedisSessionStore` behind a Sentinel-aware `RedisClient`; the sessions
/// written before the kill must survive and requests must succeed again once
/// the sentinel has promoted the replica (the outage is measured and printed;
/// it is about 2 s, asserted only against a bound five times that). The baseline — a Flask-Session app on a single Redis — loses
/// every session and stays down until someone restarts Redis.
@Suite(.serialized, .tags(.integration)) struct SentinelFailoverTests {
    // MARK: - SessionCluster on Redis Sentinel

    @Test(
        .enabled(
            if: FailoverTools.sentinelAvailable,
            """
            needs redis-server and redis-sentinel on PATH (scripts/test.sh installs them); \
            Sentinel failover test skipped
            """))
    func sentinelFailoverKeepsSessionsAndRecovers() throws {
        let sessionCount = 200
        // The failover takes about 2 s (the sentinel's down-after is 500 ms, then a vote and a
        // promotion), measured 1.6-1.8 s on an idle machine. Timing belongs in benchmarks: this
        // bound is five times that, so only a client that never finds the new master fails it.
        let recoveryBoundMillis = 10_000.0
        let root = try FailoverTools.makeTempDir("sentinel-failover")
        defer { try? FileManager.default.removeItem(at: root) }

        // Master, then replica, then sentinel: the sentinel learns about the
        // replica from the master's INFO, which it asks at once on connect and
        // then only every 10 s, so the replica must be attached before it starts.
        let master = try RedisServerProcess()
        defer { master.kill() }
        let replica = try RedisServerProcess(extraArguments: ["--replicaof", "127.0.0.1", "\(master.port)"])
        defer { replica.kill() }
        let replicaClient = FailoverTools.directClient(port: replica.port)
        let inSync = waitUntil(timeout: 15) {
            (try? replicaClient.send("INFO", "replication"))?.string?.contains("master_link_status:up") == true
        }
        try #require(inSync, "replica never reached master_link_status:up; replica log:\n\(replica.output)")

        let sentinel = try FailoverTools.startSentinel(root: root, masterPort: master.port)
        defer { sentinel.process.stop(signal: SIGKILL, timeout: 2) }
        let sentinelClient = FailoverTools.directClient(port: sentinel.port)
        let sentinelReady = waitUntil(timeout: 15) {
            guard let masterInfo = try? sentinelClient.send("SENTINEL", "master", "mymaster"),
                FailoverTools.fields(masterInfo)["flags"] == "master",
                let replicas = (try? sentinelClient.send("SENTINEL", "replicas", "mymaster"))?.array
            else { return false }
            let wanted = ["port": "\(replica.port)", "flags": "slave", "master-link-status": "ok"]
            return replicas.contains { entry in
                let info = FailoverTools.fields(entry)
                return wanted.allSatisfy { info[$0.key] == $0.value }
            }
        }
        try #require(
            sentinelReady, "sentinel never saw master + healthy replica; sentinel log:\n\(sentinel.process.output)")

        // The store under test: every new connection asks the sentinel for the master.
        let configuration = RedisConfiguration(
            endpoint: .sentinel(
                sentinels: [RedisConfiguration.SentinelAddress(host: "127.0.0.1", port: sentinel.port)],
                masterName: "mymaster"),
            poolSize: 8, connectTimeoutMillis: 1000, commandTimeoutMillis: 1000,
            reconnectBackoffMillis: 20, maxReconnectBackoffMillis: 80)
        let client = RedisClient(configuration: configuration, logger: quietLogger())
        defer { client.close() }
        let store = RedisSessionStore(client: client, logger: quietLogger())

        let ids = (0..<sessionCount).map { _ in SessionID.generate() }
        for (i, id) in ids.enumerated() {
            let applied = try store.apply(
                SessionDelta(id: id, changes: FailoverTools.knownAttributes(i), createIfMissing: true))
            try #require(applied?.created == true)
        }

        // Redis replication is asynchronous: the master acknowledges a write
        // before the replica has it, so a write the replica has not received
        // when the master crashes is lost for good, whatever the client does.
        // The guarantee under test is therefore "every write the replica has
        // acknowledged survives the failover". WAIT only waits for the writes
        // of its own connection, so write a marker on a direct connection and
        // WAIT for it there: the replication stream is one ordered log, so once
        // the replica acknowledges the marker it has every earlier write too.
        let masterClient = FailoverTools.directClient(port: master.port)
        defer { masterClient.close() }
        let acked = try masterClient.withConnection { connection -> Int64? in
            _ = try connection.command(["SET".redisBytes, "failover-test:marker".redisBytes, "1".redisBytes])
            return try connection.command(["WAIT".redisBytes, 1.redisBytes, 1000.redisBytes]).int
        }
        try #require(acked == 1, "the replica did not acknowledge the writes within 1 s (WAIT: \(acked ?? -1))")

        // FailoverTraffic: threads that load or update random sessions, every attempt logged.
        let traffic = FailoverTraffic(store: store, ids: ids)
        traffic.start(workers: 4)
        // Some normal traffic before the crash.
        let warmedUp = waitUntil(timeout: 30) { traffic.successStreak >= 100 }
        let killWallClock = Date()
        let killAt = FailoverTraffic.nowMillis()
        #expect(kill(try #require(master.pid), SIGKILL) == 0)
        // Traffic through the failover until the sentinel names the replica and 100 requests in a
        // row succeeded after the last failure, or 30 s (15 times the usual failover) pass.
        let recovered = waitUntil(timeout: 30) {
            let named = (try? sentinelClient.send("SENTINEL", "get-master-addr-by-name", "mymaster"))?.array?.last?.string
            return named == "\(replica.port)" && traffic.successStreak >= 100
        }
        let joined = traffic.stop(timeout: 10)
        #expect(warmedUp, "requests did not succeed before the master was killed: \(traffic.report(killAt: killAt).errorSummary)")
        #expect(joined, "traffic threads did not stop within 10 s")
        #expect(recovered, "no failover with 100 successful requests in a row within 30 s of the kill")

        let result = traffic.report(killAt: killAt)
        #expect(result.failuresBeforeKill == 0, "requests failed before the master was killed")
        #expect(
            result.missingSessions == 0, "a load/update found no session: data lost (\(result.missingSessions) times)")
        let timeline = FailoverTools.sentinelTimeline(log: sentinel.process.output, killedAt: killWallClock)
        let outage = try #require(
            result.outageMillis, "requests never succeeded again after the kill; sentinel: \(timeline)")
        #expect(
            outage <= recoveryBoundMillis,
            """
            requests succeeded again only \(Int(outage)) ms after the kill; sentinel: \(timeline); \
            errors: \(result.errorSummary)
            """)

        // Every session written (and replicated) before the kill is still there, with its data.
        var survived = 0
        for (i, id) in ids.enumerated() {
            let snapshot = try? store.load(id)
            let expected = Dictionary(
                uniqueKeysWithValues: FailoverTools.knownAttributes(i).compactMap { change -> (String, [UInt8])? in
                    if case .set(let name, let value) = change { return (name, value) }
                    return nil
                })
            if let snapshot, expected.allSatisfy({ snapshot.attributes[$0.key] == $0.value }) { survived += 1 }
        }
        #expect(survived == sessionCount, "only \(survived) of \(sessionCount) sessions survived the failover")

        let newMasterPort = (try? sentinelClient.send("SENTINEL", "get-master-addr-by-name", "mymaster"))?
            .array?.last?.string
        #expect(newMasterPort == "\(replica.port)", "the sentinel should have promoted the replica")

        let firstSuccess = result.firstSuccessAfterFailureMillis.map { "\(Int($0)) ms" } ?? "-"
        print("""
            [SentinelFailover] master :\(master.port) SIGKILLed; replica :\(replica.port) promoted \
            (sentinel now names :\(newMasterPort ?? "?")); sentinel: \(timeline)
            [SentinelFailover] \(result.attempts) requests, \(result.failuresAfterKill) failed after the kill; \
            outage \(Int(outage)) ms (first success after a failure at \(firstSuccess)); \
            \(survived)/\(sessionCount) sessions survived; errors: \(result.errorSummary)
            """)
        FailoverTools.record(
            .init(
                label: "SessionCluster (Redis Sentinel)", sessions: sessionCount, survived: survived,
                failed: result.failuresAfterKill, attempts: result.attemptsAfterKill,
                outage: "\(Int(outage)) ms"))
    }

    // MARK: - Baseline: Flask-Session on a single Redis

    @Test(
        .enabled(
            if: FailoverTools.redisServer != nil,
            "needs redis-server on PATH (scripts/test.sh installs it); Flask-Session baseline skipped"),
        .enabled(
            if: FailoverTools.flaskPython != nil,
            """
            needs python3 with flask, flask-session and redis (scripts/test.sh pip-installs them); \
            Flask-Session baseline skipped
            """))
    func flaskSessionOnSingleRedisLosesEverySessionAndStaysDown() throws {
        let python = try #require(FailoverTools.flaskPython)
        let sessionCount = 50

        let redis = try RedisServerProcess()
        defer { redis.kill() }

        let app = try FailoverTools.startFlaskApp(python: python, redisPort: redis.port)
        defer { app.process.stop(signal: SIGKILL, timeout: 2) }
        let base = "http://127.0.0.1:\(app.port)"

        let users = (0..<sessionCount).map { _ in CurlClient() }
        for user in users {
            _ = try user.request("POST", "\(base)/counter")
            let second = try user.request("POST", "\(base)/counter")
            try #require(
                second.status == 200 && second.body.contains("\"count\":2"),
                "Flask app: \(second.status) \(second.body)\n\(app.process.output)")
        }

        // Kill Redis and poll every 100 ms for 5 s with the users' cookies.
        let killAt = FailoverTraffic.nowMillis()
        #expect(kill(try #require(redis.pid), SIGKILL) == 0)
        var polls = 0
        var failures = 0
        while FailoverTraffic.nowMillis() - killAt < 5000 {
            let tick = FailoverTraffic.nowMillis()
            let response = try users[polls % sessionCount].request("GET", "\(base)/session")
            polls += 1
            if response.status != 200 { failures += 1 }
            let elapsed = FailoverTraffic.nowMillis() - tick
            if elapsed < 100 { usleep(UInt32((100 - elapsed) * 1000)) }
        }
        #expect(polls > 0)
        #expect(failures == polls, "the Flask app answered \(polls - failures) of \(polls) requests with Redis down")

        // Bring Redis back (no persistence, as a crashed cache comes back): every session is gone.
        try redis.start()
        let back = waitUntil(timeout: 10) { (try? users[0].request("GET", "\(base)/session").status) == 200 }
        #expect(back, "the Flask app did not recover after Redis restarted:\n\(app.process.output.suffix(2000))")
        var survived = 0
        var answered = 0
        for user in users {
            let response = try user.request("GET", "\(base)/session")
            guard response.status == 200 else { continue }
            answered += 1
            if !response.body.contains("\"count\":0") { survived += 1 }
        }
        #expect(answered == sessionCount, "only \(answered) of \(sessionCount) reads succeeded after Redis came back")
        #expect(survived == 0, "\(survived) sessions survived a Redis restart without persistence?")
        print("""
            [SentinelFailover] Flask-Session baseline: redis :\(redis.port) SIGKILLed; \(failures)/\(polls) requests \
            failed in the 5 s after the kill (down > 5 s, until Redis was restarted by hand); \
            \(survived)/\(sessionCount) sessions survived the restart
            """)
        FailoverTools.record(
            .init(
                label: "Flask-Session (single Redis)", sessions: sessionCount, survived: survived, failed: failures,
                attempts: polls, outage: failures == polls ? "> 5000 ms (until restart)" : "< 5000 ms"))
    }
}

// MARK: - FailoverTraffic

/// Worker threads that load or update random sessions until stopped; every
/// attempt is logged with its start, end and outcome.
final class FailoverTraffic: Sendable {
    struct Attempt: Sendable {
        var start: Double
        var end: Double
        var ok: Bool
    }

    struct Result {
        var attempts = 0
        var attemptsAfterKill = 0
        var failuresBeforeKill = 0
        var failuresAfterKill = 0
        var missingSessions = 0
        /// From the kill to the first success after which nothing failed.
        var outageMillis: Double?
        var firstSuccessAfterFailureMillis: Double?
        var errorSummary = ""
    }

    let store: RedisSessionStore
    let ids: [SessionID]
    private let stopping = Atomic<Bool>(false)
    private let log = Mutex<[Attempt]>([])
    private let missing = Atomic<Int>(0)
    private let streak = Atomic<Int>(0)
    private let errors = Mutex<[String: Int]>([:])
    private let group = DispatchGroup()

    init(store: RedisSessionStore, ids: [SessionID]) {
        self.store = store
        self.ids = ids
    }

    /// How many requests in a row succeeded last (across the workers; 0 right after a failure).
    var successStreak: Int { streak.load(ordering: .relaxed) }

    /// Milliseconds on the monotonic clock.
    static func nowMillis() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000 }

    func start(workers: Int) {
        for worker in 0..<workers {
            DispatchQueue.global().async(group: group) { [self] in run(worker: worker) }
        }
    }

    /// Stops the workers; false if they did not finish within `timeout` seconds.
    func stop(timeout: Double) -> Bool {
        stopping.store(true, ordering: .relaxed)
        return group.wait(timeout: .now() + timeout) == .success
    }

    private func run(worker: Int) {
        var generator = SystemRandomNumberGenerator()
        var local: [Attempt] = []
        var round = 0
        while !stopping.load(ordering: .relaxed) {
            round += 1
            let index = Int.random(in: 0..<ids.count, using: &generator)
            let id = ids[index]
            let start = Self.nowMillis()
            var ok = false
            do {
                if round % 2 == 0 {
                    let snapshot = try store.load(id)
                    ok = snapshot != nil && snapshot?.attributes["user"] == FailoverTools.userValue(index)
                } else {
                    ok = try store.apply(SessionDelta(id: id, changes: [.increment("hits", by: 1)])) != nil
                }
                if !ok { missing.add(1, ordering: .relaxed) }
            } catch {
                var text = "\(error)"
                if let cut = text.range(of: " (next attempt in") { text = String(text[..<cut.lowerBound]) }
                errors.withLock { $0[String(text.prefix(120)), default: 0] += 1 }
            }
            if ok { streak.add(1, ordering: .relaxed) } else { streak.store(0, ordering: .relaxed) }
            local.append(Attempt(start: start, end: Self.nowMillis(), ok: ok))
            // A few ms between requests, more after a failure, as real clients pace themselves.
            usleep(ok ? 2_000 : 10_000)
        }
        log.withLock { $0.append(contentsOf: local) }
    }

    func report(killAt: Double) -> Result {
        let attempts = log.withLock { $0 }.sorted { $0.end < $1.end }
        var result = Result()
        result.attempts = attempts.count
        result.missingSessions = missing.load(ordering: .relaxed)
        let after = attempts.filter { $0.end >= killAt }
        result.attemptsAfterKill = after.count
        result.failuresBeforeKill = attempts.count(where: { $0.end < killAt && !$0.ok })
        let failed = after.filter { !$0.ok }
        result.failuresAfterKill = failed.count
        if let lastFailure = failed.last?.end {
            if let recovered = after.first(where: { $0.ok && $0.end > lastFailure }) {
                result.outageMillis = recovered.end - killAt
            }
            if let firstFailure = failed.first?.end,
                let firstSuccess = after.first(where: { $0.ok && $0.end > firstFailure })
            {
                result.firstSuccessAfterFailureMillis = firstSuccess.end - killAt
            }
        } else {
            result.outageMillis = 0
        }
        result.errorSummary = errors.withLock { errors in
            errors.isEmpty
                ? "none"
                : errors.sorted { $0.value > $1.value }.prefix(4).map { "\($0.value)× \($0.key)" }
                    .joined(separator: "; ")
        }
        return result
    }
}

// MARK: - Processes and helpers

enum FailoverTools {
    /// An executable of this name on PATH.
    static func executable(_ name: String) -> URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(dir)).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return nil
    }

    static let redisServer = executable("redis-server")
    static let redisSentinel = executable("redis-sentinel")
    static let sentinelAvailable = redisServer != nil && redisSentinel != nil

    /// The real interpreter of a `python3` on PATH that can import flask,
    /// flask_session and redis; nil otherwise.
    static let flaskPython: URL? = {
        guard redisServer != nil, let python3 = executable("python3") else { return nil }
        // A ChildProcess: stopped by its PID, and it dies with the test runner.
        guard
            let probe = try? ChildProcess(
                python3, ["-c", "import sys, flask, flask_session, redis; print(sys.executable)"])
        else { return nil }
        guard probe.waitForExit(timeout: 60) == .exited(0) else {
            probe.kill()
            return nil
        }
        let path = probe.output.split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        return path.hasPrefix("/") ? URL(fileURLWithPath: path) : python3
    }()

    /// The package root, from this file's path.
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func makeTempDir(_ prefix: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A client of one Redis or sentinel at a fixed address.
    static func directClient(port: Int) -> RedisClient {
        RedisClient(
            configuration: RedisConfiguration(
                endpoint: .direct(host: "127.0.0.1", port: port), poolSize: 1, connectTimeoutMillis: 500,
                commandTimeoutMillis: 2000, reconnectBackoffMillis: 10, maxReconnectBackoffMillis: 50),
            logger: quietLogger())
    }

    struct Server {
        var process: ChildProcess
        var port: Int
    }

    /// Starts one sentinel watching 127.0.0.1:`masterPort` as "mymaster", with
    /// timeouts tuned for a test: down after 500 ms of silence.
    static func startSentinel(root: URL, masterPort: Int) throws -> Server {
        guard let binary = redisSentinel else { throw TestError("redis-sentinel not on PATH") }
        let dir = root.appendingPathComponent("sentinel")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let (process, port) = try ChildProcess.startServer { port in
            // The sentinel rewrites its config file, so it lives in the temp dir.
            let conf = dir.appendingPathComponent("sentinel-\(port).conf")
            try """
            port \(port)
            bind 127.0.0.1
            daemonize no
            dir \(dir.path)
            sentinel monitor mymaster 127.0.0.1 \(masterPort) 1
            sentinel down-after-milliseconds mymaster 500
            sentinel failover-timeout mymaster 2000
            sentinel parallel-syncs mymaster 1

            """.write(to: conf, atomically: true, encoding: .utf8)
            return try ChildProcess(binary, [conf.path])
        } isUp: { port in
            RedisServerProcess.answersPing(port: port)
        }
        return Server(process: process, port: port)
    }

    /// Starts scripts/flask_session_app.py on a free port and waits for /healthz.
    static func startFlaskApp(python: URL, redisPort: Int) throws -> Server {
        let script = packageRoot.appendingPathComponent("scripts/flask_session_app.py")
        let probe = CurlClient()
        let (process, port) = try ChildProcess.startServer(timeout: 20) { port in
            try ChildProcess(python, [script.path, "\(port)", "\(redisPort)"])
        } isUp: { port in
            (try? probe.request("GET", "http://127.0.0.1:\(port)/healthz", useJar: false).status) == 200
        }
        return Server(process: process, port: port)
    }

    /// A flat [key, value, key, value…] reply (SENTINEL master/replicas) as a dictionary.
    static func fields(_ value: RedisValue) -> [String: String] {
        guard let items = value.array else { return [:] }
        var out: [String: String] = [:]
        var i = 0
        while i + 1 < items.count {
            if let key = items[i].string, let value = items[i + 1].string { out[key] = value }
            i += 2
        }
        return out
    }

    static func userValue(_ index: Int) -> [UInt8] { Array("\"user-\(index)\"".utf8) }

    /// The attributes session `index` is written with.
    static func knownAttributes(_ index: Int) -> [SessionChange] {
        [.set("user", userValue(index)), .set("cart", Array("[\(index),\(index * 7)]".utf8))]
    }

    /// When the sentinel logged its failover steps, in ms after the kill
    /// (its log has wall-clock times of day, with milliseconds, so these are
    /// good to ~10 ms). Events after "+switch-master" are listed too (once,
    /// under the full suite's load, a "+sdown"/"+odown" of the new master
    /// ~500 ms after the switch).
    static func sentinelTimeline(log: String, killedAt: Date) -> String {
        let events = [
            "+sdown master", "+odown", "+promoted-slave", "+switch-master", "+failover-end", "-failover-abort",
        ]
        let calendar = Calendar.current
        let parts = calendar.dateComponents([.hour, .minute, .second, .nanosecond], from: killedAt)
        let killMillis =
            Double(((parts.hour ?? 0) * 60 + (parts.minute ?? 0)) * 60 + (parts.second ?? 0)) * 1000
            + Double(parts.nanosecond ?? 0) / 1_000_000
        var steps: [String] = []
        for line in log.split(separator: "\n") {
            guard let event = events.first(where: { line.contains($0) }) else { continue }
            // "pid:X 24 Nov 2026 09:15:13.123 # +sdown master mymaster 127.0.0.1 6380"
            let words = line.split(separator: " ")
            guard words.count > 4 else { continue }
            let clock = words[4].split(separator: ":")
            guard clock.count == 3, let h = Double(clock[0]), let m = Double(clock[1]), let s = Double(clock[2]) else {
                continue
            }
            let millis = ((h * 60 + m) * 60 + s) * 1000 - killMillis
            guard millis > -1000 else { continue }  // events of the start-up, if any
            steps.append("\(event.split(separator: " ")[0]) +\(Int(millis)) ms")
        }
        return steps.isEmpty ? "(no failover events logged)" : steps.joined(separator: ", ")
    }

    // MARK: Side-by-side numbers

    struct Outcome: Sendable {
        var label: String
        var sessions: Int
        var survived: Int
        var failed: Int
        var attempts: Int
        var outage: String
    }

    private static let outcomes = Mutex<[Outcome]>([])

    /// Records one side; once both are in, prints them side by side.
    static func record(_ outcome: Outcome) {
        let all = outcomes.withLock { list -> [Outcome] in
            list.append(outcome)
            return list
        }
        guard all.count == 2 else { return }
        let ours = all.first { $0.label.hasPrefix("SessionCluster") } ?? all[0]
        let theirs = all.first { $0.label.hasPrefix("Flask") } ?? all[1]
        func row(_ title: String, _ a: String, _ b: String) -> String {
            [title, a].map { $0.padding(toLength: 34, withPad: " ", startingAt: 0) }.joined() + b
        }
        print(
            """
            [SentinelFailover] side by side, master/Redis SIGKILLed under traffic:
            \(row("", ours.label, theirs.label))
            \(row("sessions surviving", "\(ours.survived)/\(ours.sessions)", "\(theirs.survived)/\(theirs.sessions)"))
            \(row("failed requests after the kill", "\(ours.failed)/\(ours.attempts)",
                   "\(theirs.failed)/\(theirs.attempts)"))
            \(row("outage", ours.outage, theirs.outage))
            """)
    }
}
