import ArgumentParser
import Dispatch
import Histogram
import Logging
import MiniHTTP
import SessionCore
import SessionRedis
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

extension SessionClusterCommand {
    /// Load+save round trips per second through `RedisSessionStore`: what one
    /// request of a node costs Redis (a load, then a save of its changes).
    struct BenchStore: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bench-store",
            abstract: "Measure session load+save round trips per second through the Redis session store.",
            discussion: """
                Creates --sessions sessions (a counter and a string of about --attribute-bytes \
                bytes each) under a key prefix of its own, then runs --concurrency threads for \
                --duration seconds, their commands pipelined on --pipeline-connections shared \
                connections (0: a pooled connection each). Each iteration picks a random session, \
                loads it, and applies a delta (set 'last', increment 'count'): one round trip. Prints \
                a JSON line and a summary — with Redis's CPU time per round trip over the measured \
                window (INFO cpu) — then deletes its keys.
                """)

        @Option(help: "Redis URL: redis://[[user]:password@]host[:port][/db].")
        var redis = "redis://127.0.0.1:6379"

        @Option(help: "Threads, and pooled Redis connections.")
        var concurrency = 50

        @Option(help: "Shared connections the threads' commands are pipelined on (0: none, a connection per command).")
        var pipelineConnections = RedisConfiguration().pipelineConnections

        @OptionGroup var window: MeasurementWindow

        @Option(help: "Sessions created beforehand; each iteration picks one at random.")
        var sessions = 10_000

        @Option(help: "Size of each session's string attribute, in bytes.")
        var attributeBytes = 100

        @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
        var logLevel = "warning"

        func validate() throws {
            guard (1...4096).contains(concurrency) else { throw ValidationError("--concurrency must be 1...4096") }
            guard (1...10_000_000).contains(sessions) else { throw ValidationError("--sessions must be 1...10000000") }
            guard (0...60_000).contains(attributeBytes) else { throw ValidationError("--attribute-bytes must be 0...60000") }
            guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        }

        func run() throws {
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            var logger = Logger(label: "bench-store")
            logger.logLevel = Logger.Level(rawValue: logLevel) ?? .warning

            var configuration: RedisConfiguration
            do {
                configuration = try RedisConfiguration(url: redis)
            } catch let error as RedisError {
                throw ValidationError("--redis: \(error.message)")
            }
            configuration.poolSize = concurrency
            configuration.pipelineConnections = pipelineConnections
            let client = RedisClient(configuration: configuration, logger: logger)
            defer { client.close() }
            guard client.ping() else {
                throw BenchStoreFailure("Redis at \(redis) does not answer PING")
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
                    let delta = SessionDelta(
                        id: ids[i], changes: [.set("count", encodeCounter(0)), .set("payload", payload)],
                        createIfMissing: true)
                    do {
                        if try store.apply(delta) != nil { mine.append(ids[i]) }
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
                throw BenchStoreFailure("no session could be created" + (first.map { ": \($0)" } ?? ""))
            }
            return all
        }

        /// Runs the load+save loop on `concurrency` threads: warm-up, then the measured window.
        private func measure(store: RedisSessionStore, client: RedisClient, ids: [SessionID], stop: StopFlag) -> Outcome {
            let results = Mutex(Outcome())
            let start = monotonicNanos()
            let (measureFrom, measureUntil) = window.bounds(startingAt: start)
            // Redis's CPU time at both ends of the window, read beside the load.
            let redisCPU = Mutex<(from: Double?, until: Double?)>((nil, nil))
            let sampler = DispatchGroup()
            sampler.enter()
            startThread {
                defer { sampler.leave() }
                func sleep(until deadline: UInt64) {
                    while !stop.isSet, monotonicNanos() < deadline { usleep(1_000) }
                }
                sleep(until: measureFrom)
                let from = Self.redisCPUSeconds(client)
                sleep(until: measureUntil)
                let until = Self.redisCPUSeconds(client)
                redisCPU.withLock { $0 = (from, until) }
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
                        throw BenchStoreFailure("unexpected SCAN reply: \(reply)")
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
            ]
            if let cpu = outcome.redisCPUSeconds, outcome.roundTrips > 0 {
                fields.append("\"redis_cpu_us_per_round_trip\":\(fixed(cpu * 1e6 / Double(outcome.roundTrips), 2))")
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
}

// MARK: - Helpers

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

    mutating func merge(_ other: Outcome) {
        roundTrips += other.roundTrips
        errors += other.errors
        errorKinds.merge(other.errorKinds, uniquingKeysWith: +)
        if firstError == nil { firstError = other.firstError }
        histogram.add(other.histogram)
    }
}

private struct BenchStoreFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
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

/// Runs `body(0..<count)` on `count` threads and waits for all of them (the benchmarks' load generators).
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for t in 0..<count {
        group.enter()
        startThread {
            body(t)
            group.leave()
        }
    }
    group.wait()
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

/// `value` with exactly `digits` decimals (no exponent form); the benchmarks' JSON and tables.
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "null" }
    var scale: Double = 1
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int64((abs(value) * scale).rounded())
    let unit = Int64(scale)
    let whole = String(scaled / unit)
    let sign = value < 0 && scaled != 0 ? "-" : ""
    guard digits > 0 else { return sign + whole }
    let fraction = String(scaled % unit)
    return sign + whole + "." + String(repeating: "0", count: digits - fraction.count) + fraction
}

private func printError(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// `--duration` and `--warmup` of the load benchmarks.
struct MeasurementWindow: ParsableArguments {
    @Option(help: "Seconds to measure.")
    var duration: Double = 10

    @Option(help: "Seconds of unmeasured warm-up before the measurement.")
    var warmup: Double = 1

    func validate() throws {
        guard duration > 0, duration <= 86_400 else { throw ValidationError("--duration must be in (0, 86400] seconds") }
        guard warmup >= 0, warmup <= 3_600 else { throw ValidationError("--warmup must be in [0, 3600] seconds") }
    }

    /// When measuring starts and ends (monotonic nanoseconds), for a load started at `start`.
    func bounds(startingAt start: UInt64) -> (from: UInt64, until: UInt64) {
        let from = start + UInt64(warmup * 1e9)
        return (from, from + UInt64(duration * 1e9))
    }
}
