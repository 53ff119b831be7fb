/// What is done to a node at a point of the run.
public enum FaultAction: String, Sendable, Codable, CaseIterable {
    /// SIGKILL: the process dies at once, like a crash.
    case kill
    /// The node is started again (after a kill).
    case restart
    /// SIGSTOP: the process freezes with its sockets open, like a long GC pause.
    case stop
    /// SIGCONT: a stopped process runs again (the end of a `stop:` window).
    case resume
}

/// Carries out fault actions on the cluster's nodes (the cluster supervisor
/// implements it). Called on the benchmark's scheduler thread; a thrown error
/// is recorded on the fault's marker and the run goes on.
public protocol FaultInjector: Sendable {
    func apply(_ action: FaultAction, node: String) throws
}

/// One fault as written on the command line: `kill:node2@10s`,
/// `restart:node2@20s`, or `stop:node3@12s-15s` (SIGSTOP at 12 s, SIGCONT at 15 s).
///
/// Times are offsets from the start of the run: a number with `s` (default),
/// `ms` or `m`, e.g. `10s`, `1.5s`, `500ms`. Node names are letters, digits,
/// `.`, `_` and `-`.
public struct Fault: Sendable, Codable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case kill, restart, stop
    }

    public var kind: Kind
    public var node: String
    public var atMillis: Int
    /// The end of a `stop` window (when SIGCONT is sent); nil for other kinds.
    public var untilMillis: Int?

    public init(kind: Kind, node: String, atMillis: Int, untilMillis: Int? = nil) {
        self.kind = kind
        self.node = node
        self.atMillis = atMillis
        self.untilMillis = untilMillis
    }

    /// Parses one fault; the error says what is wrong with it.
    public static func parse(_ spec: String) throws(FaultPlanError) -> Fault {
        func fail(_ reason: String) -> FaultPlanError { FaultPlanError(spec: spec, reason: reason) }
        guard let colon = spec.firstIndex(of: ":") else {
            throw fail("expected ACTION:NODE@TIME, e.g. kill:node2@10s")
        }
        let name = String(spec[..<colon])
        guard let kind = Kind(rawValue: name) else {
            throw fail("unknown action '\(name)' (expected kill, restart or stop)")
        }
        let rest = spec[spec.index(after: colon)...]
        guard let at = rest.firstIndex(of: "@") else { throw fail("missing @TIME after the node name") }
        let node = String(rest[..<at])
        guard !node.isEmpty else { throw fail("missing node name") }
        guard node.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
            throw fail("node name '\(node)' may only hold letters, digits, '.', '_' and '-'")
        }
        let times = rest[rest.index(after: at)...].split(separator: "-", omittingEmptySubsequences: false)
        guard let start = parseMillis(times[0]) else { throw fail("'\(times[0])' is not a time such as 10s or 500ms") }
        switch (kind, times.count) {
        case (.stop, 2):
            guard let end = parseMillis(times[1]) else {
                throw fail("'\(times[1])' is not a time such as 15s or 500ms")
            }
            guard end > start else { throw fail("the stop window must end after it starts") }
            return Fault(kind: kind, node: node, atMillis: start, untilMillis: end)
        case (.stop, _):
            throw fail("stop needs a window START-END, e.g. stop:\(node)@12s-15s")
        case (_, 1):
            return Fault(kind: kind, node: node, atMillis: start)
        default:
            throw fail("only stop takes a window; \(kind.rawValue) takes one time")
        }
    }

    /// The canonical spelling, e.g. `stop:node3@12s-15s`.
    public var description: String {
        "\(kind.rawValue):\(node)@\(formatSeconds(atMillis))" + (untilMillis.map { "-\(formatSeconds($0))" } ?? "")
    }

    /// A time offset in milliseconds, or nil when malformed, negative or beyond 24 hours.
    static func parseMillis(_ text: Substring) -> Int? {
        var number = text
        var scale = 1000.0
        if number.hasSuffix("ms") {
            number = number.dropLast(2)
            scale = 1
        } else if number.hasSuffix("s") {
            number = number.dropLast()
        } else if number.hasSuffix("m") {
            number = number.dropLast()
            scale = 60_000
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            let value = Double(number), value >= 0, value * scale <= 86_400_000
        else { return nil }
        return Int((value * scale).rounded())
    }
}

/// A fault plan that cannot be used: which spec, and why.
public struct FaultPlanError: Error, Sendable, Equatable, CustomStringConvertible {
    public var spec: String
    public var reason: String
    public init(spec: String, reason: String) {
        self.spec = spec
        self.reason = reason
    }
    public var description: String { "fault '\(spec)': \(reason)" }
}

/// One action of a plan at its time.
public struct FaultStep: Sendable, Codable, Equatable {
    public var atMillis: Int
    public var action: FaultAction
    public var node: String

    public init(atMillis: Int, action: FaultAction, node: String) {
        self.atMillis = atMillis
        self.action = action
        self.node = node
    }
}

/// The faults of a run, as data: the benchmark applies them on time through
/// a `FaultInjector` and marks each on the timeline.
public struct FaultPlan: Sendable, Codable, Equatable {
    public var faults: [Fault]

    public init(_ faults: [Fault] = []) { self.faults = faults }

    /// Parses each spec (see `Fault`); two stop windows of one node must not overlap.
    public init(parsing specs: [String]) throws(FaultPlanError) {
        var faults: [Fault] = []
        for spec in specs { faults.append(try Fault.parse(spec)) }
        for (i, a) in faults.enumerated() where a.kind == .stop {
            for b in faults[(i + 1)...] where b.kind == .stop && b.node == a.node {
                if a.atMillis < b.untilMillis! && b.atMillis < a.untilMillis! {
                    throw FaultPlanError(spec: b.description, reason: "overlaps \(a) on the same node")
                }
            }
        }
        self.init(faults)
    }

    public var isEmpty: Bool { faults.isEmpty }

    /// Every action in time order (a stop gives a stop and a resume); ties keep the plan's order.
    public var steps: [FaultStep] {
        var steps: [FaultStep] = []
        for fault in faults {
            switch fault.kind {
            case .kill: steps.append(FaultStep(atMillis: fault.atMillis, action: .kill, node: fault.node))
            case .restart: steps.append(FaultStep(atMillis: fault.atMillis, action: .restart, node: fault.node))
            case .stop:
                steps.append(FaultStep(atMillis: fault.atMillis, action: .stop, node: fault.node))
                steps.append(FaultStep(atMillis: fault.untilMillis ?? fault.atMillis, action: .resume, node: fault.node))
            }
        }
        return steps.enumerated().sorted { ($0.element.atMillis, $0.offset) < ($1.element.atMillis, $1.offset) }
            .map(\.element)
    }

    /// Throws when an action falls at or after the end of a run of `durationMillis`.
    public func validate(durationMillis: Int) throws(FaultPlanError) {
        for fault in faults where max(fault.atMillis, fault.untilMillis ?? 0) >= durationMillis {
            throw FaultPlanError(
                spec: fault.description, reason: "falls outside the run of \(formatSeconds(durationMillis))")
        }
    }
}

/// A fault as it happened, on the run's timeline.
public struct FaultMarker: Sendable, Codable, Equatable {
    public var action: FaultAction
    public var node: String
    /// When the plan asked for it, since the start of the run.
    public var plannedMillis: Int
    /// When it was applied (just before the injector was called), since the start of the run.
    public var atMillis: Int
    /// The injector's error, when the action failed.
    public var error: String?
    /// See `FailoverAnalysis.detectMillis`.
    public var detectMillis: Int?
    /// See `FailoverAnalysis.recoverMillis`.
    public var recoverMillis: Int?

    public init(
        action: FaultAction, node: String, plannedMillis: Int, atMillis: Int, error: String? = nil,
        detectMillis: Int? = nil, recoverMillis: Int? = nil
    ) {
        self.action = action
        self.node = node
        self.plannedMillis = plannedMillis
        self.atMillis = atMillis
        self.error = error
        self.detectMillis = detectMillis
        self.recoverMillis = recoverMillis
    }

    /// E.g. `kill node2`.
    public var label: String { "\(action.rawValue) \(node)" }
}

/// Parses a time such as `10s`, `1.5s`, `500ms` or `2m` (a bare number is
/// seconds) into milliseconds: the syntax of fault times, for a CLI's
/// `--duration`. Nil when malformed, negative or beyond 24 hours.
public func parseBenchTimeMillis(_ text: String) -> Int? { Fault.parseMillis(Substring(text)) }

/// `10s`, `12.5s`.
func formatSeconds(_ millis: Int) -> String {
    millis % 1000 == 0 ? "\(millis / 1000)s" : "\(Double(millis) / 1000)s"
}
