#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Histogram
import Logging
import SessionCore
import SessionRedis
import Synchronization
import SystemSupport

/// Load+save round trips per second through `RedisSessionStore`: what one
/// request of a node costs Redis (a load, then a save of its changes). The
/// CLI's `bench-store` sets these and calls `run`.
public struct StoreBench: Sendable {
    /// Redis URL: redis://[[user]:password@]host[:port][/db].
    public var redis = "redis://127.0.0.1:6379"
    /// Threads, and pooled Redis connections.
    public var concurrency = 50
    /// Shared connections the threads' commands are pipelined on (0: a connection per command).
    public var pipelineConnections = RedisConfiguration().pipelineConnections
    /// The warm-up and the measured window.
    public var window = BenchWindow()
    /// Sessions created beforehand; each iteration picks one at random.
    public var sessions = 10_000
    /// Size of each session's string attribute, in bytes.
    public var attributeBytes = 100
    /// Log every session in (four per user) before the window: what the principal index costs
    /// the requests of logged-in users.
    public var loggedIn = false

    public init() {}

    /// Throws when a setting is out of range (the messages name the CLI's options).
    public func validate() throws(BenchFailure) {
        try window.validate()
        try checkRange(concurrency, 1...4096, "--concurrency")
        try checkRange(sessions, 1...10_000_000, "--sessions")
        try checkRange(attributeBytes, 0...60_000, "--attribute-bytes")
    }
}

extension StoreBench {
    /// Creates the sessions, runs the measured window, prints the results, deletes its keys.
    public func run(logger: Logger) throws {

        var configuration: RedisConfiguration
        do {
            configuration = try RedisConfiguration(url: redis)
        } catch let error as RedisError {
            throw BenchFailure("--redis: \(error.message)")
        }
        configuration.poolSize = concurrency
        configuration.pipelineConnections = pipelineConnections
        let client = RedisClient(configuration: configuration, logger: logger)
        defer { client.close() }
        guard client.ping() else {
            throw BenchFailure("Redis at \(redis) does not answer PING")
        }

        let prefix = "bench-store:\(randomHex(bytes: 8)):"
        let store = RedisSessionStore(client: client, keyPrefix: prefix, logger: logger)
        let stop = StopFlag()
        let signals = stop.installSignalHandlers()
        defer { signals.forEach { $0.cancel() } }

        let ids = (0..<sessions).map { _ in SessionID.generate() }
        let outcome: Outcome
        do {
            defer { cleanUp(client: client, prefix: prefix) }
            let created = try prepare(store: store, ids: ids, stop: stop)
            outcome = measure(store: store, client: client, ids: created, stop: stop)
        }
        report(outcome, interrupted: stop.isSet)
    }

    // MARK: - Phases

    /// Creates the sessions, `concurrency` threads at a time; returns the ones created.
    private func prepare(store: RedisSessionStore, ids: [SessionID], stop: StopFlag) throws -> [SessionID] {
        let payload = encodedString(length: attributeBytes)
        let threads = min(concurrency, ids.count)
        let created = Mutex<[[SessionID]]>(Array(repeating: [], count: threads))
        let failures = Mutex<(count: Int, first: String?)>((0, nil))
        runThreads(threads) { t in
            var mine: [SessionID] = []
            for i in stride(from: t, to: ids.count, by: threads) {
                if stop.isSet { break }
                var id = ids[i]
                do {
                    if loggedIn {
                        let user = "user-\(i % max(1, ids.count / 4))"
                        id = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: user))
                        _ = try store.changePrincipal(PrincipalChange(id: nil, newID: id, principal: user, client: "bench"))
                    }
                    let delta = SessionDelta(
                        id: id, changes: [.set("count", encodeCounter(0)), .set("payload", payload)],
                        createIfMissing: !loggedIn)
                    if try store.apply(delta) != nil { mine.append(id) }
                } catch {
                    failures.withLock { f in
                        f.count += 1
                        if f.first == nil { f.first = "\(error)" }
                    }
                }
            }
            created.withLock { $0[t] = mine }
        }
        let all = created.withLock { $0.flatMap { $0 } }
        let (failed, first) = failures.withLock { ($0.count, $0.first) }
        if failed > 0 {
            printError("bench-store: \(failed) of \(ids.count) sessions could not be created; first error: \(first ?? "?")")
        }
        guard !all.isEmpty else {
            throw BenchFailure("no session could be created" + (first.map { ": \($0)" } ?? ""))
        }
        return all
    }

    /// Runs the load+save loop on `concurrency` threads: warm-up, then the measured window.
    private func measure(store: RedisSessionStore, client: RedisClient, ids: [SessionID], stop: StopFlag) -> Outcome {
        let results = Mutex(Outcome())
        let start = monotonicNanos()
        let (measureFrom, measureUntil) = window.bounds(startingAt: start)
        // Redis's CPU time and commands at both ends of the window, read beside the load.
        let redisCPU = Mutex<(from: Double?, until: Double?)>((nil, nil))
        let redisCommands = Mutex<(from: RedisCalls?, until: RedisCalls?)>((nil, nil))
        let sampler = DispatchGroup()
        sampler.enter()
        startThread {
            defer { sampler.leave() }
            func sleep(until deadline: UInt64) {
                while !stop.isSet, monotonicNanos() < deadline { usleep(1_000) }
            }
            sleep(until: measureFrom)
            let from = Self.redisCPUSeconds(client)
            let commandsFrom = Self.redisCommands(client)
            sleep(until: measureUntil)
            let until = Self.redisCPUSeconds(client)
            let commandsUntil = Self.redisCommands(client)
            redisCPU.withLock { $0 = (from, until) }
            redisCommands.withLock { $0 = (commandsFrom, commandsUntil) }
        }
        runThreads(concurrency) { t in
            var rng = SplitMix64(seed: UInt64.random(in: .min ... .max) &+ UInt64(t))
            var histogram = Histogram<UInt64>(
                lowestDiscernibleValue: 1, highestTrackableValue: Outcome.highestMicros,
                numberOfSignificantValueDigits: .three)
            var local = Outcome()
            while !stop.isSet {
                let id = ids[rng.below(ids.count)]
                let began = monotonicNanos()
                if began >= measureUntil { break }
                var failure: String? = nil
                do {
                    if try store.load(id) == nil {
                        failure = "load: session missing"
                    } else if try store.apply(SessionDelta(
                        id: id,
                        changes: [.set("last", encodeCounter(Int64(began / 1000))), .increment("count", by: 1)]))
                        == nil
                    {
                        failure = "apply: session missing"
                    }
                } catch let error as SessionStoreError {
                    failure = error.description
                } catch {
                    failure = "\(error)"
                }
                let ended = monotonicNanos()
                guard ended >= measureFrom, ended <= measureUntil else {
                    if failure != nil { usleep(1000) }  // do not spin on a dead Redis
                    continue
                }
                if let failure {
                    local.errors += 1
                    local.errorKinds[errorKind(failure), default: 0] += 1
                    if local.firstError == nil { local.firstError = failure }
                    usleep(1000)
                } else {
                    local.roundTrips += 1
                    histogram.record(min((ended - began) / 1000, Outcome.highestMicros))
                }
            }
            local.histogram = histogram
            results.withLock { $0.merge(local) }
        }
        sampler.wait()
        var outcome = results.withLock { $0 }
        if case (let from?, let until?) = redisCPU.withLock({ $0 }), !stop.isSet { outcome.redisCPUSeconds = until - from }
        if case (let from?, let until?) = redisCommands.withLock({ $0 }), !stop.isSet {
            outcome.redisCalls = RedisCalls(sent: until.sent - from.sent, all: until.all - from.all)
        }
        let finished = monotonicNanos()
        // Only round trips that ended inside the window count; interrupted early, the window is what ran.
        outcome.seconds = finished <= measureFrom ? 0 : Double(min(finished, measureUntil) - measureFrom) / 1e9
        outcome.sessions = ids.count
        return outcome
    }

    /// Redis's CPU seconds so far (INFO cpu: used_cpu_sys + used_cpu_user); nil when it cannot be read.
    private static func redisCPUSeconds(_ client: RedisClient) -> Double? {
        guard let info = try? client.send("INFO", "cpu").string else { return nil }
        let fields = info.split(separator: "\r\n").filter { $0.hasPrefix("used_cpu_sys:") || $0.hasPrefix("used_cpu_user:") }
        guard fields.count == 2 else { return nil }
        return fields.compactMap { Double($0.split(separator: ":").last ?? "") }.reduce(0, +)
    }

    /// The commands Redis has run so far (INFO commandstats, INFO's own left out): `all` counts
    /// the `redis.call`s inside scripts too; `sent`, what the store sends (HGETALL, EVALSHA, EVAL —
    /// the load script's own HGETALL runs only when a touch is due, which a window of seconds
    /// under a 30-minute idle timeout never is). Nil when it cannot be read.
    private static func redisCommands(_ client: RedisClient) -> RedisCalls? {
        guard let info = try? client.send("INFO", "commandstats").string else { return nil }
        var calls = RedisCalls(sent: 0, all: 0)
        for line in info.split(separator: "\r\n") where line.hasPrefix("cmdstat_") && !line.hasPrefix("cmdstat_info:") {
            guard let field = line.split(separator: ",").first?.split(separator: "=").last, let n = Int(field) else { return nil }
            calls.all += n
            if line.hasPrefix("cmdstat_hgetall:") || line.hasPrefix("cmdstat_evalsha:") || line.hasPrefix("cmdstat_eval:") {
                calls.sent += n
            }
        }
        return calls
    }

    /// Deletes every key under `prefix` (SCAN + UNLINK).
    private func cleanUp(client: RedisClient, prefix: String) {
        var cursor = "0"
        var deleted = 0
        do {
            repeat {
                let reply = try client.send("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
                guard let parts = reply.array, parts.count == 2, let next = parts[0].string,
                    let keys = parts[1].array
                else {
                    throw BenchFailure("unexpected SCAN reply: \(reply)")
                }
                let batch = keys.compactMap(\.bytes)
                if !batch.isEmpty {
                    deleted += Int(try client.send(["UNLINK".redisBytes] + batch).int ?? 0)
                }
                cursor = next
            } while cursor != "0"
        } catch {
            printError("bench-store: cleaning up keys '\(prefix)*' failed after \(deleted) deleted: \(error)")
            return
        }
        printError("bench-store: deleted \(deleted) keys under '\(prefix)'")
    }

    private func report(_ outcome: Outcome, interrupted: Bool) {
        let rate = outcome.seconds > 0 ? Double(outcome.roundTrips) / outcome.seconds : 0
        let h = outcome.histogram
        func ms(_ percentile: Double) -> String {
            outcome.roundTrips == 0 ? "null" : fixed(Double(h.valueAtPercentile(percentile)) / 1000, 3)
        }
        let kinds = outcome.errorKinds.sorted { $0.key < $1.key }
            .map { "\(jsonQuoted($0.key)):\($0.value)" }.joined(separator: ",")
        var fields = [
            "\"round_trips_per_s\":\(fixed(rate, 1))",
            "\"p50_ms\":\(ms(50))",
            "\"p99_ms\":\(ms(99))",
            "\"errors\":\(outcome.errors)",
            "\"p90_ms\":\(ms(90))",
            "\"p999_ms\":\(ms(99.9))",
            "\"max_ms\":\(outcome.roundTrips == 0 ? "null" : fixed(Double(h.max) / 1000, 3))",
            "\"round_trips\":\(outcome.roundTrips)",
            "\"seconds\":\(fixed(outcome.seconds, 3))",
            "\"concurrency\":\(concurrency)",
            "\"sessions\":\(outcome.sessions)",
            "\"attribute_bytes\":\(attributeBytes)",
            "\"error_kinds\":{\(kinds)}",
            "\"pipeline_connections\":\(pipelineConnections)",
            "\"logged_in\":\(loggedIn)",
        ]
        if let cpu = outcome.redisCPUSeconds, outcome.roundTrips > 0 {
            fields.append("\"redis_cpu_us_per_round_trip\":\(fixed(cpu * 1e6 / Double(outcome.roundTrips), 2))")
        }
        if let calls = outcome.redisCalls, outcome.roundTrips > 0 {
            let perRoundTrip = { (n: Int) in fixed(Double(n) / Double(outcome.roundTrips), 2) }
            fields.append("\"redis_commands_per_round_trip\":\(perRoundTrip(calls.sent))")
            fields.append("\"redis_calls_per_round_trip\":\(perRoundTrip(calls.all))")
        }
        if let first = outcome.firstError { fields.append("\"first_error\":\(jsonQuoted(first))") }
        if interrupted { fields.append("\"interrupted\":true") }
        print("{" + fields.joined(separator: ",") + "}")
        print(
            "bench-store: \(fixed(rate, 1)) round trips/s (load+save) over \(fixed(outcome.seconds, 1)) s, "
                + "\(concurrency) threads, \(outcome.sessions) sessions; latency p50 \(ms(50)) ms, "
                + "p99 \(ms(99)) ms, max \(outcome.roundTrips == 0 ? "-" : fixed(Double(h.max) / 1000, 3)) ms; "
                + "\(outcome.errors) errors" + (interrupted ? " (interrupted)" : ""))
        fflush(nil)
    }

    private func errorKind(_ message: String) -> String {
        if message.hasPrefix("load: session missing") || message.hasPrefix("apply: session missing") {
            return "missing"
        }
        if let colon = message.firstIndex(of: ":") { return String(message[..<colon]) }
        return "other"
    }
}

/// Results of the measured window, per thread then merged.
private struct Outcome: Sendable {
    static let highestMicros: UInt64 = 60_000_000

    var roundTrips = 0
    var errors = 0
    var errorKinds: [String: Int] = [:]
    var firstError: String?
    var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: highestMicros, numberOfSignificantValueDigits: .three)
    var seconds: Double = 0
    var sessions = 0
    /// Redis's CPU time over the measured window.
    var redisCPUSeconds: Double?
    /// The commands Redis ran over the measured window.
    var redisCalls: RedisCalls?

    mutating func merge(_ other: Outcome) {
        roundTrips += other.roundTrips
        errors += other.errors
        errorKinds.merge(other.errorKinds, uniquingKeysWith: +)
        if firstError == nil { firstError = other.firstError }
        histogram.add(other.histogram)
    }
}

/// Commands Redis ran: those the store sent, and all, the calls inside its scripts included.
private struct RedisCalls: Sendable {
    var sent: Int
    var all: Int
}

/// Set by SIGINT/SIGTERM: the threads stop, the keys are still deleted.
private final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }

    func installSignalHandlers() -> [any DispatchSourceSignal] {
        [SIGINT, SIGTERM].map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in flag.store(true, ordering: .relaxed) }
            source.resume()
            return source
        }
    }
}

private func randomHex(bytes: Int) -> String {
    var rng = SystemRandomNumberGenerator()
    return (0..<bytes).map { _ in
        let b = UInt8.random(in: 0...255, using: &rng)
        return (b < 16 ? "0" : "") + String(b, radix: 16)
    }.joined()
}

/// A JSON string of `length` bytes in all, quotes included (at least the two quotes).
private func encodedString(length: Int) -> [UInt8] {
    [34] + Array(repeating: UInt8(ascii: "x"), count: max(0, length - 2)) + [34]
}

private func printError(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}
