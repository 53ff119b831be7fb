extension Fault {
    /// `slow-link:A-B@START-END:LATENCY[/LOSS%]` (or `A,B` when the names hold `-`): the link
    /// between two nodes (or a node and `redis`) delays everything by `LATENCY` each way and, with
    /// a loss, holds that share of what it forwards one retransmission timeout more.
    static func parseSlowLink(_ spec: String) throws(FaultPlanError) -> Fault {
        func fail(_ reason: String) -> FaultPlanError { FaultPlanError(spec: spec, reason: reason) }
        let example = "e.g. slow-link:node1-node2@10s-15s:200ms or slow-link:node1-node2@10s-15s:50ms/5%"
        let rest = spec.dropFirst("slow-link:".count)
        guard let at = rest.firstIndex(of: "@") else { throw fail("missing @START-END:LATENCY, \(example)") }
        let pairText = rest[..<at]
        let pair = (pairText.contains(",") ? pairText.split(separator: ",", omittingEmptySubsequences: false)
            : pairText.split(separator: "-", omittingEmptySubsequences: false)).map(String.init)
        guard pair.count == 2, pair.allSatisfy(isNodeName) else {
            throw fail("'\(pairText)' is not two nodes A-B (or A,B when their names hold '-'), \(example)")
        }
        guard pair[0] != pair[1] else { throw fail("a link joins two different nodes") }
        let window = rest[rest.index(after: at)...].split(separator: ":", omittingEmptySubsequences: false)
        guard window.count == 2 else { throw fail("expected @START-END:LATENCY, \(example)") }
        let (start, end) = try parseWindow(window[0], missing: "a slow link needs a window START-END, \(example)", fail)
        let quality = window[1].split(separator: "/", omittingEmptySubsequences: false)
        guard quality.count <= 2, let latency = parseMillis(quality[0]), latency <= 10_000 else {
            throw fail("'\(window[1])' is not a latency of at most 10s (such as 200ms), optionally /LOSS% (such as /5%)")
        }
        var loss = 0
        if quality.count == 2 {
            guard quality[1].hasSuffix("%"), let percent = Int(quality[1].dropLast()), (0...100).contains(percent) else {
                throw fail("'\(quality[1])' is not a loss such as 5% (0% to 100%)")
            }
            loss = percent
        }
        guard latency > 0 || loss > 0 else { throw fail("a slow link needs a latency or a loss above 0") }
        var fault = Fault(kind: .slowLink, node: "", atMillis: start, untilMillis: end)
        fault.groups = [pair]
        fault.latencyMillis = latency
        fault.lossPercent = loss
        return fault
    }

    /// What a `slow` step names: `A,B:LATENCYms/LOSS%`.
    var slowLinkTarget: String {
        "\((groups?.first ?? []).joined(separator: ",")):\(latencyMillis ?? 0)ms/\(lossPercent ?? 0)%"
    }

    /// The canonical spelling of a slow link.
    var slowLinkDescription: String {
        let pair = groups?.first ?? []
        let names = pair.joined(separator: pair.contains { $0.contains("-") } ? "," : "-")
        let loss = (lossPercent ?? 0) > 0 ? "/\(lossPercent ?? 0)%" : ""
        return "slow-link:\(names)@\(formatSeconds(atMillis))-\(formatSeconds(untilMillis ?? atMillis)):"
            + "\(latencyMillis ?? 0)ms\(loss)"
    }

    /// The link and its quality of a `slow` step's target (`FaultStep.node`); nil when malformed.
    public static func slowLink(_ target: String) -> (a: String, b: String, latencyMillis: Int, lossPercent: Int)? {
        let parts = target.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let pair = parts[0].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let quality = parts[1].split(separator: "/", omittingEmptySubsequences: false)
        guard pair.count == 2, pair.allSatisfy(isNodeName), quality.count == 2, quality[0].hasSuffix("ms"),
            quality[1].hasSuffix("%"), let latency = Int(quality[0].dropLast(2)), let loss = Int(quality[1].dropLast())
        else { return nil }
        return (pair[0], pair[1], latency, loss)
    }
}
