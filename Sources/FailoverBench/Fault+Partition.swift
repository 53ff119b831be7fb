extension Fault {
    /// `partition:GROUP|GROUP...@START-END` (a group: nodes separated by `,`; one group alone
    /// means it and every other node) or `isolate:NODE@START-END`.
    static func parsePartition(_ spec: String) throws(FaultPlanError) -> Fault {
        func fail(_ reason: String) -> FaultPlanError { FaultPlanError(spec: spec, reason: reason) }
        let isolate = spec.hasPrefix("isolate:")
        let rest = spec.dropFirst(isolate ? "isolate:".count : "partition:".count)
        guard let at = rest.lastIndex(of: "@") else {
            throw fail(isolate ? "missing @START-END, e.g. isolate:node2@10s-15s" : "missing @START-END, e.g. partition:node1|node2,node3@10s-15s")
        }
        var groups: [[String]] = []
        var seen: Set<String> = []
        for text in rest[..<at].split(separator: "|", omittingEmptySubsequences: false) {
            var group: [String] = []
            for name in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
                guard !name.isEmpty else { throw fail("an empty node name in '\(rest[..<at])'") }
                guard isNodeName(name) else { throw fail("node name '\(name)' may only hold letters, digits, '.', '_' and '-'") }
                guard seen.insert(name).inserted else { throw fail("node '\(name)' is named twice") }
                group.append(name)
            }
            groups.append(group)
        }
        if isolate {
            guard groups.count == 1, groups[0].count == 1 else { throw fail("isolate takes one node, e.g. isolate:node2@10s-15s") }
        }
        let (start, end) = try parseWindow(
            rest[rest.index(after: at)...], missing: "a partition needs a window START-END, e.g. @10s-15s", fail)
        var fault = Fault(kind: isolate ? .isolate : .partition, node: isolate ? groups[0][0] : "", atMillis: start, untilMillis: end)
        if !isolate { fault.groups = groups }
        return fault
    }

    /// `START-END`: two times, the end after the start; `missing` says why when it is not two.
    static func parseWindow(
        _ text: Substring, missing: String, _ fail: (String) -> FaultPlanError
    ) throws(FaultPlanError) -> (start: Int, end: Int) {
        let times = text.split(separator: "-", omittingEmptySubsequences: false)
        guard times.count == 2 else { throw fail(missing) }
        guard let start = parseMillis(times[0]) else { throw fail("'\(times[0])' is not a time such as 10s or 500ms") }
        guard let end = parseMillis(times[1]) else { throw fail("'\(times[1])' is not a time such as 15s or 500ms") }
        guard end > start else { throw fail("the window must end after it starts") }
        return (start, end)
    }

    /// What a `partition` step names: the groups as `a|b,c`, or the isolated node alone.
    var partitionTarget: String { kind == .isolate ? node : Self.groupsText(groups ?? []) }

    static func groupsText(_ groups: [[String]]) -> String {
        groups.map { $0.joined(separator: ",") }.joined(separator: "|")
    }

    /// The groups of a `partition` step's target (`FaultStep.node`): `a|b,c` → [[a], [b, c]];
    /// nil when malformed. One group means it and every other node.
    public static func partitionGroups(_ target: String) -> [[String]]? {
        let groups = target.split(separator: "|", omittingEmptySubsequences: false).map {
            $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        }
        guard !groups.isEmpty, groups.allSatisfy({ !$0.isEmpty && $0.allSatisfy(isNodeName) }) else { return nil }
        return groups
    }
}
