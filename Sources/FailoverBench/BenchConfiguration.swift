/// How a run paces its requests.
public enum Pacing: Sendable, Equatable {
    /// Each user sends its next request as soon as the previous one is
    /// answered, after an optional think time. Latency runs from the send.
    case closedLoop(thinkTimeMillis: Int)
    /// `requestsPerSecond` in all, spread evenly over the users: user `u`'s
    /// k-th request is due at `u/R + k·N/R` seconds. A request that is due
    /// while the user still waits for an answer is sent right after it, and
    /// its latency runs from when it was due (coordinated-omission correction).
    case fixedRate(requestsPerSecond: Double)
}

/// The settings of one benchmark run.
public struct BenchConfiguration: Sendable {
    public var target: BenchTarget
    /// Simulated users: each has its own cookie jar and keep-alive connection.
    public var users: Int
    /// Stop after this many seconds (at least one of `durationSeconds` and `maxRequests`).
    public var durationSeconds: Double?
    /// Stop after this many requests were started (a retry is part of its request).
    public var maxRequests: Int?
    public var pacing: Pacing
    /// Every `readEvery`-th request of a user is a read (0: writes only).
    public var readEvery: Int
    /// Longest wait for an attempt's answer, connect included.
    public var requestTimeoutMillis: Int
    /// Pause before the retry of a failed write, and (closed loop) after a failed request.
    public var retryBackoffMillis: Int
    /// Threads running the users (each drives its share with poll()).
    public var threads: Int
    /// The timeline's resolution.
    public var bucketMillis: Int
    public var faults: FaultPlan
    /// How often the progress callback is called.
    public var progressIntervalMillis: Int
    /// Whether each write carries an `Idempotency-Key` (and a failed write is retried once with it).
    /// Without keys a failed write is not retried: whether the server applied it is unknown, and
    /// the checker allows for both (see `SessionChecker`).
    public var idempotencyKeys: Bool
    /// The balancer's slow-start window, if it has one: a node back from a restart gets its full
    /// share of the requests only after it. Where `SettledShare` starts counting (0: none).
    public var slowStartMillis: Int
    /// The nodes behind the target, read directly after the load by `ConvergenceCheck`
    /// (empty: no check; where each node has sessions of its own, there is nothing to agree on).
    public var convergenceNodes: [BenchNode] = []

    public init(
        target: BenchTarget, users: Int = 50, durationSeconds: Double? = 10, maxRequests: Int? = nil,
        pacing: Pacing = .closedLoop(thinkTimeMillis: 0), readEvery: Int = 4, requestTimeoutMillis: Int = 2_000,
        retryBackoffMillis: Int = 10, threads: Int = 1, bucketMillis: Int = 250, faults: FaultPlan = FaultPlan(),
        progressIntervalMillis: Int = 1_000, idempotencyKeys: Bool = true, slowStartMillis: Int = 0
    ) {
        self.target = target
        self.users = users
        self.durationSeconds = durationSeconds
        self.maxRequests = maxRequests
        self.pacing = pacing
        self.readEvery = readEvery
        self.requestTimeoutMillis = requestTimeoutMillis
        self.retryBackoffMillis = retryBackoffMillis
        self.threads = threads
        self.bucketMillis = bucketMillis
        self.faults = faults
        self.progressIntervalMillis = progressIntervalMillis
        self.idempotencyKeys = idempotencyKeys
        self.slowStartMillis = slowStartMillis
    }

    /// Throws when a setting is out of range or a fault falls outside the run.
    public func validate() throws(BenchConfigurationError) {
        func check(_ ok: Bool, _ message: String) throws(BenchConfigurationError) {
            if !ok { throw BenchConfigurationError(message) }
        }
        try check((1...100_000).contains(users), "users must be 1...100000")
        try check(durationSeconds != nil || maxRequests != nil, "give a duration or a request count")
        if let d = durationSeconds { try check(d > 0 && d <= 86_400, "the duration must be in (0, 86400] seconds") }
        if let n = maxRequests { try check(n >= 1, "the request count must be at least 1") }
        switch pacing {
        case .closedLoop(let think): try check((0...600_000).contains(think), "the think time must be 0...600000 ms")
        case .fixedRate(let rate): try check(rate > 0 && rate <= 10_000_000, "the rate must be in (0, 10000000] per s")
        }
        try check(readEvery >= 0, "readEvery must be 0 or more")
        try check((1...600_000).contains(requestTimeoutMillis), "the request timeout must be 1...600000 ms")
        try check((0...60_000).contains(retryBackoffMillis), "the retry backoff must be 0...60000 ms")
        try check((1...64).contains(threads), "threads must be 1...64")
        try check((10...60_000).contains(bucketMillis), "the bucket must be 10...60000 ms")
        try check(progressIntervalMillis >= 10, "the progress interval must be at least 10 ms")
        try check((0...3_600_000).contains(slowStartMillis), "the slow-start window must be 0...3600000 ms")
        if let rolling = faults.unresolvedRolling.first {
            throw BenchConfigurationError(
                "fault '\(rolling)': the nodes to restart are not known; name them (rolling:node1,node2,node3@...) "
                    + "or let the benchmark start the cluster")
        }
        if let d = durationSeconds {
            do throws(FaultPlanError) {
                try faults.validate(durationMillis: Int(d * 1000))
            } catch {
                throw BenchConfigurationError(error.description)
            }
        }
    }

    var settings: RunSettings {
        var rate: Double?
        var think = 0
        switch pacing {
        case .closedLoop(let t): think = t
        case .fixedRate(let r): rate = r
        }
        return RunSettings(
            users: users, durationSeconds: durationSeconds, maxRequests: maxRequests, rate: rate, thinkTimeMillis: think,
            readEvery: readEvery, requestTimeoutMillis: requestTimeoutMillis, bucketMillis: bucketMillis,
            write: target.write.description, read: target.read.description, faults: faults.faults.map(\.description),
            idempotencyKeys: idempotencyKeys, slowStartMillis: slowStartMillis)
    }
}

/// A configuration that cannot run, with the reason.
public struct BenchConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A snapshot for the live progress line.
public struct BenchProgress: Sendable, Equatable {
    public var strategy: String
    public var elapsedSeconds: Double
    /// The planned length, when the run has a duration.
    public var durationSeconds: Double?
    public var counts: OutcomeCounts
    /// 2xx answers per second since the previous snapshot.
    public var answeredPerSecond: Double
    /// The last fault applied so far, e.g. `kill node2`.
    public var lastFault: String?

    /// One line, e.g. `redis  12.0/30s  4312 req/s  errors 3  lost sessions 0 ...`.
    public var line: String {
        let elapsed = fixed(elapsedSeconds, 1) + (durationSeconds.map { "/\(fixed($0, 0))s" } ?? "s")
        var parts = [
            strategy, elapsed, "\(fixed(answeredPerSecond, 0)) req/s", "requests \(counts.requests)",
            "errors \(counts.errors)", "lost sessions \(counts.lostSessions)", "lost updates \(counts.lostUpdates)",
            "duplicates \(counts.duplicates)", "stale reads \(counts.staleReads)",
        ]
        if let lastFault { parts.append("[\(lastFault)]") }
        return parts.joined(separator: "  ")
    }
}

/// `value` with `digits` decimals (0...9).
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "-" }
    var scale = 1
    for _ in 0..<digits { scale *= 10 }
    let units = Int((abs(value) * Double(scale)).rounded())
    let sign = value < 0 && units > 0 ? "-" : ""
    guard digits > 0 else { return sign + "\(units)" }
    let fraction = String(units % scale)
    return sign + "\(units / scale)." + String(repeating: "0", count: digits - fraction.count) + fraction
}
