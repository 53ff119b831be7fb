import Histogram

/// Answers counted by kind (see `AnswerKind`); used per bucket and for a whole run.
public struct OutcomeCounts: Sendable, Codable, Equatable {
    public var successes = 0
    public var errors = 0
    public var lostSessions = 0
    public var lostUpdates = 0
    public var duplicates = 0
    public var staleReads = 0

    public init() {}

    /// Every answer counted: each attempt is exactly one kind.
    public var requests: Int { successes + errors + anomalies }
    /// Lost sessions, lost updates, duplicates and stale reads.
    public var anomalies: Int { lostSessions + lostUpdates + duplicates + staleReads }
    /// 2xx answers (successes and anomalies): the throughput.
    public var answered: Int { successes + anomalies }

    /// The count of one kind.
    public subscript(kind: AnswerKind) -> Int {
        get {
            switch kind {
            case .success: successes
            case .error: errors
            case .lostSession: lostSessions
            case .lostUpdate: lostUpdates
            case .duplicate: duplicates
            case .staleRead: staleReads
            }
        }
        set {
            switch kind {
            case .success: successes = newValue
            case .error: errors = newValue
            case .lostSession: lostSessions = newValue
            case .lostUpdate: lostUpdates = newValue
            case .duplicate: duplicates = newValue
            case .staleRead: staleReads = newValue
            }
        }
    }

    /// Adds every count of `other`.
    public mutating func add(_ other: OutcomeCounts) {
        for kind in AnswerKind.allCases { self[kind] += other[kind] }
    }
}

/// One slice of the timeline (by the time answers arrived; 250 ms by default).
public struct TimelineBucket: Sendable, Codable, Equatable {
    /// Since the start of the run.
    public var startMillis: Int
    /// The slice's length: `bucketMillis`, or less for the last one.
    public var durationMillis: Int
    public var counts: OutcomeCounts
    /// The 99th percentile of the latencies recorded in the slice; nil when none were.
    public var p99Millis: Double?
    /// 2xx answers per serving node.
    public var nodes: [String: Int]

    public init(startMillis: Int, durationMillis: Int, counts: OutcomeCounts = OutcomeCounts(), p99Millis: Double? = nil,
        nodes: [String: Int] = [:])
    {
        self.startMillis = startMillis
        self.durationMillis = durationMillis
        self.counts = counts
        self.p99Millis = p99Millis
        self.nodes = nodes
    }

    /// 2xx answers per second in this slice.
    public var answeredPerSecond: Double {
        durationMillis > 0 ? Double(counts.answered) * 1000 / Double(durationMillis) : 0
    }
}

/// Latency percentiles in milliseconds (nil when nothing was recorded).
///
/// Recorded for every 2xx answer: from the send of the request's first
/// attempt (closed loop) or from its intended send time (fixed rate), to
/// the answer — so a retry's latency includes the failed attempt before it.
public struct LatencySummary: Sendable, Codable, Equatable {
    public var count: Int
    public var p50Millis: Double?
    public var p90Millis: Double?
    public var p99Millis: Double?
    public var p999Millis: Double?
    public var maxMillis: Double?

    public init(count: Int = 0, p50Millis: Double? = nil, p90Millis: Double? = nil, p99Millis: Double? = nil,
        p999Millis: Double? = nil, maxMillis: Double? = nil)
    {
        self.count = count
        self.p50Millis = p50Millis
        self.p90Millis = p90Millis
        self.p99Millis = p99Millis
        self.p999Millis = p999Millis
        self.maxMillis = maxMillis
    }

    /// Percentiles of a histogram of microseconds.
    init<Count>(microseconds h: Histogram<Count>) {
        guard h.totalCount > 0 else {
            self.init()
            return
        }
        func ms(_ p: Double) -> Double { Double(h.valueAtPercentile(p)) / 1000 }
        self.init(
            count: Int(h.totalCount), p50Millis: ms(50), p90Millis: ms(90), p99Millis: ms(99), p999Millis: ms(99.9),
            maxMillis: Double(h.max) / 1000)
    }
}

/// The longest time one user went without a 2xx answer.
///
/// Per user: from its start to its first 2xx answer, between consecutive 2xx
/// answers (anomalies are answers too; errors are not), and from its last 2xx
/// answer to the end of the run when errors came after it. The maximum over users.
public struct LongestGap: Sendable, Codable, Equatable {
    public var millis: Double
    public var user: Int
    /// When the gap ended, since the start of the run.
    public var endedAtMillis: Int

    public init(millis: Double = 0, user: Int = 0, endedAtMillis: Int = 0) {
        self.millis = millis
        self.user = user
        self.endedAtMillis = endedAtMillis
    }
}

/// The totals of one run.
public struct RunSummary: Sendable, Codable, Equatable {
    /// Every answer by kind; `counts.requests` counts attempts, retries included.
    public var counts: OutcomeCounts
    /// Attempts that repeated a failed write with the same `Idempotency-Key`.
    public var retries: Int
    /// Requests (not attempts) that ended with an error: every attempt failed.
    public var failedRequests: Int
    /// Errors by cause: `timeout`, `connect`, `closed`, `http 503`, `bad answer`, ...
    public var errorKinds: [String: Int]
    /// Connections established (a keep-alive connection closed by the server is reopened).
    public var connections: Int
    /// 2xx answers per serving node.
    public var nodes: [String: Int]
    /// The measured time.
    public var seconds: Double
    public var latency: LatencySummary
    public var longestGap: LongestGap

    public init(counts: OutcomeCounts = OutcomeCounts(), retries: Int = 0, failedRequests: Int = 0,
        errorKinds: [String: Int] = [:], connections: Int = 0, nodes: [String: Int] = [:], seconds: Double = 0,
        latency: LatencySummary = LatencySummary(), longestGap: LongestGap = LongestGap())
    {
        self.counts = counts
        self.retries = retries
        self.failedRequests = failedRequests
        self.errorKinds = errorKinds
        self.connections = connections
        self.nodes = nodes
        self.seconds = seconds
        self.latency = latency
        self.longestGap = longestGap
    }

    /// 2xx answers per second.
    public var answeredPerSecond: Double { seconds > 0 ? Double(counts.answered) / seconds : 0 }
}

/// The settings a run used, as reported.
public struct RunSettings: Sendable, Codable, Equatable {
    public var users: Int
    public var durationSeconds: Double?
    public var maxRequests: Int?
    /// Requests per second in all, for fixed-rate runs.
    public var rate: Double?
    public var thinkTimeMillis: Int
    public var readEvery: Int
    public var requestTimeoutMillis: Int
    public var bucketMillis: Int
    public var write: String
    public var read: String
    public var faults: [String]
    /// Whether writes carried an `Idempotency-Key` (nil in reports made before the switch existed: they did).
    public var idempotencyKeys: Bool?
    /// The balancer's slow-start window the run was told of (see `SettledShare`).
    public var slowStartMillis: Int?
}

/// Everything measured for one strategy (or one target).
public struct StrategyResult: Sendable, Codable {
    public var name: String
    public var target: String
    public var settings: RunSettings
    public var summary: RunSummary
    public var buckets: [TimelineBucket]
    /// The faults as applied, with their detect and recover times.
    public var faults: [FaultMarker]
    /// Each node's share of the 2xx answers once the cluster settled after its restarts (nil: no restart).
    public var settledShare: SettledShare?
    /// Whether every node agreed on every session after the load, and with what the users were told (nil: not checked).
    public var convergence: ConvergenceResult?
    /// Every 2xx latency in microseconds (not written to report.json).
    public var latencyHistogram: Histogram<UInt64>

    private enum CodingKeys: String, CodingKey {
        case name, target, settings, summary, buckets, faults, settledShare, convergence
    }

    public init(name: String, target: String, settings: RunSettings, summary: RunSummary, buckets: [TimelineBucket],
        faults: [FaultMarker], settledShare: SettledShare? = nil, convergence: ConvergenceResult? = nil,
        latencyHistogram: Histogram<UInt64> = StrategyResult.emptyHistogram())
    {
        self.name = name
        self.target = target
        self.settings = settings
        self.summary = summary
        self.buckets = buckets
        self.faults = faults
        self.settledShare = settledShare
        self.convergence = convergence
        self.latencyHistogram = latencyHistogram
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            name: try c.decode(String.self, forKey: .name), target: try c.decode(String.self, forKey: .target),
            settings: try c.decode(RunSettings.self, forKey: .settings),
            summary: try c.decode(RunSummary.self, forKey: .summary),
            buckets: try c.decode([TimelineBucket].self, forKey: .buckets),
            faults: try c.decode([FaultMarker].self, forKey: .faults),
            settledShare: try c.decodeIfPresent(SettledShare.self, forKey: .settledShare),
            convergence: try c.decodeIfPresent(ConvergenceResult.self, forKey: .convergence))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(target, forKey: .target)
        try c.encode(settings, forKey: .settings)
        try c.encode(summary, forKey: .summary)
        try c.encode(buckets, forKey: .buckets)
        try c.encode(faults, forKey: .faults)
        try c.encodeIfPresent(settledShare, forKey: .settledShare)
        try c.encodeIfPresent(convergence, forKey: .convergence)
    }

    /// Latencies up to 60 s, in microseconds, three significant digits.
    public static func emptyHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    }
}
