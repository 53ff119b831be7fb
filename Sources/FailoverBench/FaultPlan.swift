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
    /// The groups named by the step's `node` (`node-1|node-2,node-3`; one group alone: it and the
    /// rest) cannot reach each other over their replication links; the balancer reaches every node.
    case partition
    /// Every link cut by `partition` works again (the end of a `partition:` or `isolate:` window).
    case heal
    /// The link named by the step's `node` (`A,B:200ms/5%`) delays and loses as given (`slow-link:`).
    case slow
    /// That link is fast again (the end of a `slow-link:` window).
    case unslow
}

/// Carries out fault actions on the cluster's nodes (the cluster supervisor
/// implements it). Called on the benchmark's scheduler thread; a thrown error
/// is recorded on the fault's marker and the run goes on.
public protocol FaultInjector: Sendable {
    func apply(_ action: FaultAction, node: String) throws
}

/// One fault as written on the command line: `kill:node2@10s`,
/// `restart:node2@20s`, `stop:node3@12s-15s` (SIGSTOP at 12 s, SIGCONT at 15 s), or
/// `rolling@10s:6s` (a rolling restart: every node of the cluster restarted in turn, the
/// first at 10 s, each next one 6 s later; `rolling:node1,node3@10s:6s` names the nodes and their order).
///
/// Times are offsets from the start of the run: a number with `s` (default),
/// `ms` or `m`, e.g. `10s`, `1.5s`, `500ms`. Node names are letters, digits,
/// `.`, `_` and `-`.
public struct Fault: Sendable, Codable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case kill, restart, stop
        /// A restart of each of `nodes` in turn, `gapMillis` apart (see `FaultPlan.resolvingRolling(nodes:)`).
        case rolling
        /// `groups` cannot reach each other from `atMillis` to `untilMillis` (`Fault+Partition.swift`).
        case partition
        /// `node` cannot reach the other nodes from `atMillis` to `untilMillis`.
        case isolate
        /// The link between the two nodes of `groups[0]` is slow from `atMillis` to `untilMillis`
        /// (`Fault+SlowLink.swift`).
        case slowLink = "slow-link"
    }

    public var kind: Kind
    /// The node; empty for `rolling` (see `nodes`).
    public var node: String
    public var atMillis: Int
    /// The end of a `stop` window (when SIGCONT is sent); nil for other kinds.
    public var untilMillis: Int?
    /// `rolling`: the time from one restart to the next (more than 0); nil for other kinds.
    public var gapMillis: Int?
    /// `rolling`: the nodes restarted, in order; nil until known (`rolling@10s:6s` means every node
    /// of the cluster, filled in by `FaultPlan.resolvingRolling(nodes:)`). Nil for other kinds.
    public var nodes: [String]?
    /// `partition`: the groups, each a list of nodes; `slow-link`: one group, the link's two ends; nil for other kinds.
    public var groups: [[String]]?
    /// `slow-link`: the delay each way, and the share of chunks held one retransmission timeout more.
    public var latencyMillis: Int?
    public var lossPercent: Int?

    public init(kind: Kind, node: String, atMillis: Int, untilMillis: Int? = nil) {
        self.kind = kind
        self.node = node
        self.atMillis = atMillis
        self.untilMillis = untilMillis
    }

    /// A rolling restart of `nodes` (nil: every node of the cluster, once known), the first at
    /// `atMillis`, each next one `gapMillis` later.
    public static func rolling(atMillis: Int, gapMillis: Int, nodes: [String]? = nil) -> Fault {
        var fault = Fault(kind: .rolling, node: "", atMillis: atMillis)
        fault.gapMillis = gapMillis
        fault.nodes = nodes
        return fault
    }

    /// Parses one fault; the error says what is wrong with it.
    public static func parse(_ spec: String) throws(FaultPlanError) -> Fault {
        func fail(_ reason: String) -> FaultPlanError { FaultPlanError(spec: spec, reason: reason) }
        if spec.hasPrefix("rolling") { return try parseRolling(spec) }
        if spec.hasPrefix("partition:") || spec.hasPrefix("isolate:") { return try parsePartition(spec) }
        if spec.hasPrefix("slow-link:") { return try parseSlowLink(spec) }
        guard let colon = spec.firstIndex(of: ":") else {
            throw fail("expected ACTION:NODE@TIME, e.g. kill:node2@10s, or rolling@START:GAP, e.g. rolling@10s:6s")
        }
        let name = String(spec[..<colon])
        guard let kind = Kind(rawValue: name) else {
            throw fail("unknown action '\(name)' (expected kill, restart, stop, rolling, partition, isolate or slow-link)")
        }
        let rest = spec[spec.index(after: colon)...]
        guard let at = rest.firstIndex(of: "@") else { throw fail("missing @TIME after the node name") }
        let node = String(rest[..<at])
        guard !node.isEmpty else { throw fail("missing node name") }
        guard isNodeName(node) else {
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

    /// `rolling@START:GAP` or `rolling:NODE,NODE...@START:GAP`.
    private static func parseRolling(_ spec: String) throws(FaultPlanError) -> Fault {
        func fail(_ reason: String) -> FaultPlanError { FaultPlanError(spec: spec, reason: reason) }
        let rest = spec.dropFirst("rolling".count)
        guard let at = rest.firstIndex(of: "@") else {
            throw fail("missing @START:GAP, e.g. rolling@10s:6s (the first restart at 10 s, each next one 6 s later)")
        }
        var nodes: [String]?
        if rest.first == ":" {
            let list = rest[rest.index(after: rest.startIndex)..<at]
            guard !list.isEmpty else { throw fail("missing node names after 'rolling:' (or leave them out: rolling@10s:6s)") }
            var names: [String] = []
            for name in list.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
                guard !name.isEmpty else { throw fail("an empty node name in '\(list)'") }
                guard isNodeName(name) else { throw fail("node name '\(name)' may only hold letters, digits, '.', '_' and '-'") }
                guard !names.contains(name) else { throw fail("node '\(name)' is listed twice") }
                names.append(name)
            }
            nodes = names
        } else if rest.first != "@" {
            throw fail("expected rolling@START:GAP, e.g. rolling@10s:6s")
        }
        let times = rest[rest.index(after: at)...].split(separator: ":", omittingEmptySubsequences: false)
        guard times.count >= 2 else {
            throw fail("missing the gap between two restarts: rolling@START:GAP, e.g. rolling@\(times[0]):6s")
        }
        guard times.count == 2 else { throw fail("expected rolling@START:GAP, e.g. rolling@10s:6s") }
        guard let start = parseMillis(times[0]) else { throw fail("'\(times[0])' is not a time such as 10s or 500ms") }
        guard let gap = parseMillis(times[1]) else { throw fail("'\(times[1])' is not a time such as 6s or 500ms") }
        guard gap > 0 else { throw fail("the gap between two restarts must be more than 0") }
        return .rolling(atMillis: start, gapMillis: gap, nodes: nodes)
    }

    /// Letters, digits, `.`, `_` and `-`.
    static func isNodeName(_ name: String) -> Bool {
        !name.isEmpty && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
    }

    /// `rolling`: the time of the restart of the `index`-th node (0-based).
    func rollingMillis(_ index: Int) -> Int { atMillis + index * (gapMillis ?? 0) }

    /// The canonical spelling, e.g. `stop:node3@12s-15s`, `rolling@10s:6s`, `rolling:node-1,node-2@10s:6s`.
    public var description: String {
        if kind == .rolling {
            return "rolling" + (nodes.map { ":" + $0.joined(separator: ",") } ?? "") + "@\(formatSeconds(atMillis)):"
                + formatSeconds(gapMillis ?? 0)
        }
        if kind == .partition, let groups {
            return "partition:\(Self.groupsText(groups))@\(formatSeconds(atMillis))-\(formatSeconds(untilMillis ?? atMillis))"
        }
        if kind == .slowLink { return slowLinkDescription }
        return "\(kind.rawValue):\(node)@\(formatSeconds(atMillis))" + (untilMillis.map { "-\(formatSeconds($0))" } ?? "")
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

    /// Parses each spec (see `Fault`); two stop windows of one node must not overlap, nor two partitions.
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
        // A heal ends every partition: two windows may not overlap.
        let partitions = faults.filter { $0.kind == .partition || $0.kind == .isolate }
        for (i, a) in partitions.enumerated() {
            for b in partitions[(i + 1)...] where a.atMillis < b.untilMillis! && b.atMillis < a.untilMillis! {
                throw FaultPlanError(spec: b.description, reason: "overlaps \(a): one partition at a time")
            }
        }
        self.init(faults)
    }

    public var isEmpty: Bool { faults.isEmpty }

    /// The plan with every `rolling` fault that names no nodes given `nodes` (the cluster's
    /// nodes, in the order they restart); the others as they are.
    public func resolvingRolling(nodes: [String]) -> FaultPlan {
        FaultPlan(faults.map { fault in
            guard fault.kind == .rolling, fault.nodes == nil else { return fault }
            var resolved = fault
            resolved.nodes = nodes
            return resolved
        })
    }

    /// The plan with every node name passed through `canonical` (e.g. `node2` → `node-2`).
    public func mappingNodes(_ canonical: (String) -> String) -> FaultPlan {
        FaultPlan(faults.map { fault in
            var mapped = fault
            if !fault.node.isEmpty { mapped.node = canonical(fault.node) }
            mapped.nodes = fault.nodes?.map(canonical)
            mapped.groups = fault.groups?.map { $0.map(canonical) }
            return mapped
        })
    }

    /// The `rolling` faults whose nodes are not known yet (see `resolvingRolling(nodes:)`).
    public var unresolvedRolling: [Fault] { faults.filter { $0.kind == .rolling && $0.nodes == nil } }

    /// Every action in time order (a stop gives a stop and a resume, a rolling fault a restart per
    /// node); ties keep the plan's order. A rolling fault whose nodes are not known gives none.
    public var steps: [FaultStep] {
        var steps: [FaultStep] = []
        for fault in faults {
            switch fault.kind {
            case .kill: steps.append(FaultStep(atMillis: fault.atMillis, action: .kill, node: fault.node))
            case .restart: steps.append(FaultStep(atMillis: fault.atMillis, action: .restart, node: fault.node))
            case .stop:
                steps.append(FaultStep(atMillis: fault.atMillis, action: .stop, node: fault.node))
                steps.append(FaultStep(atMillis: fault.untilMillis ?? fault.atMillis, action: .resume, node: fault.node))
            case .rolling:
                for (index, node) in (fault.nodes ?? []).enumerated() {
                    steps.append(FaultStep(atMillis: fault.rollingMillis(index), action: .restart, node: node))
                }
            case .slowLink:
                steps.append(FaultStep(atMillis: fault.atMillis, action: .slow, node: fault.slowLinkTarget))
                steps.append(FaultStep(atMillis: fault.untilMillis ?? fault.atMillis, action: .unslow, node: fault.slowLinkTarget))
            case .partition, .isolate:
                let target = fault.partitionTarget
                steps.append(FaultStep(atMillis: fault.atMillis, action: .partition, node: target))
                steps.append(FaultStep(atMillis: fault.untilMillis ?? fault.atMillis, action: .heal, node: target))
            }
        }
        return steps.enumerated().sorted { ($0.element.atMillis, $0.offset) < ($1.element.atMillis, $1.offset) }
            .map(\.element)
    }

    /// Throws when an action falls at or after the end of a run of `durationMillis` — except the
    /// end of a `stop:`, `partition:` or `isolate:` window, which may fall at the end itself: the
    /// node is then resumed, or the partition healed, as the load stops (so the convergence
    /// check measures from the heal). A rolling fault's last restart counts: with its nodes, or,
    /// when they are not known yet, with `clusterSize` nodes (only its first restart when that is nil too).
    public func validate(durationMillis: Int, clusterSize: Int? = nil) throws(FaultPlanError) {
        for fault in faults {
            var last = max(fault.atMillis, fault.untilMillis ?? 0)
            if fault.kind == .rolling, let count = fault.nodes?.count ?? clusterSize {
                guard count > 0 else { throw FaultPlanError(spec: fault.description, reason: "there is no node to restart") }
                last = fault.rollingMillis(count - 1)
            }
            let endsWithTheRun = fault.kind != .rolling && fault.untilMillis == durationMillis && fault.atMillis < durationMillis
            guard last >= durationMillis, !endsWithTheRun else { continue }
            var reason = "falls outside the run of \(formatSeconds(durationMillis))"
            if fault.kind == .rolling && last > fault.atMillis {
                let count = fault.nodes?.count ?? clusterSize ?? 1
                reason += ": the last of its \(count) restarts would come at \(formatSeconds(last))"
            }
            throw FaultPlanError(spec: fault.description, reason: reason)
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
