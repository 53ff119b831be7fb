extension BenchReport {
    /// `report.html`: one self-contained page (inline CSS and SVG, no script,
    /// nothing fetched) with the summary table, the definitions, and per
    /// strategy an SVG timeline: 2xx answers/s and p99 per bucket on top,
    /// errors and anomalies per bucket below, faults as labelled vertical lines.
    public func html() -> String {
        var out = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>\(escape(title))</title>
            <style>
            body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}
            table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
            td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
            svg{border:1px solid #ddd;background:#fff}svg text{font:11px sans-serif;fill:#333}
            .note{color:#555;font-size:13px}
            </style></head><body>
            <h1>\(escape(title))</h1>
            <p class="note">\(escape(createdAt))\(command.map { " · <code>\(escape($0))</code>" } ?? "")</p>

            """
        out += summaryTable()
        out += definitions
        for strategy in strategies { out += section(strategy) }
        out += "</body></html>\n"
        return out
    }

    private func summaryTable() -> String {
        let header = [
            "strategy", "requests", "req/s", "errors", "lost sessions", "lost updates", "duplicates", "stale reads",
            "p50 ms", "p99 ms", "p99.9 ms", "max ms", "longest gap ms", "detect ms", "recover ms",
        ]
        var out = "<table><tr>" + header.map { "<th>\($0)</th>" }.joined() + "</tr>\n"
        for row in summaryRows {
            out += "<tr>" + row.map { "<td>\(escape($0))</td>" }.joined() + "</tr>\n"
        }
        return out + "</table>\n"
    }

    private var definitions: String {
        """
        <p class="note">Each attempt is counted once: success, error (transport error, timeout, non-2xx), \
        lost session (the counter starts again at 1, or a read finds no session), lost update (a confirmed \
        increment is missing), duplicate (an increment applied twice), stale read (a read below the last \
        confirmed write). Latency: 2xx answers, from the first send (closed loop) or the intended send time \
        (fixed rate), a retried write from its first attempt; max: the longest any user waited for an answer. Longest gap: the longest time a user went without a 2xx answer. Detect: from a fault to \
        the first error or anomaly before the next fault. Recover: from a fault to the first bucket after which buckets have no errors \
        and at least 90% of the pre-fault median throughput. Share after settling (runs with restarts): each node's \
        share of the 2xx answers from when the last restarted node served again plus the balancer's slow-start \
        window, to the end of the run, and the largest deviation from an even share, |share − 1/n| / (1/n).</p>

        """
    }

    private func section(_ s: StrategyResult) -> String {
        var out = "<section><h2>\(escape(s.name))</h2>\n<p class=\"note\">\(escape(s.target)) · \(s.settings.users) users"
        if let rate = s.settings.rate { out += " · \(fixed(rate, 0)) req/s fixed rate" }
        out += " · \(fixed(s.summary.seconds, 1)) s · \(s.summary.retries) retries · \(s.summary.connections) connections"
        let nodes = s.summary.nodes.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        if !nodes.isEmpty { out += " · served by " + escape(nodes.joined(separator: ", ")) }
        if s.settings.idempotencyKeys == false { out += " · writes without Idempotency-Key, not retried" }
        out += "</p>\n"
        if let share = s.settledShare {
            out += "<p class=\"note\">Share of 2xx answers after settling: " + escape(share.summary) + "</p>\n"
        }
        for f in s.faults {
            out += "<p class=\"note\">\(escape(f.label)) at \(fixed(Double(f.atMillis) / 1000, 2)) s: detect "
                + (f.detectMillis.map { "\($0) ms" } ?? "none") + ", recover "
                + (f.recoverMillis.map { "\($0) ms" } ?? "not within the window")
                + (f.error.map { " — failed: " + escape($0) } ?? "") + "</p>\n"
        }
        return out + TimelineChart(result: s).svg + "</section>\n"
    }
}

/// The SVG timeline of one strategy: three panels over one time axis.
private struct TimelineChart {
    /// A horizontal band of the chart, from `y0` (top) to `y1` (bottom).
    struct Panel {
        var y0: Double
        var y1: Double
        func y(_ value: Double, max: Double) -> Double { y1 - (y1 - y0) * value / max }
    }

    static let colors = (
        answered: "#1f77b4", p99: "#9467bd", errors: "#d62728",
        anomalies: [("#ff7f0e", "lost sessions"), ("#8c564b", "lost updates"), ("#e377c2", "duplicates"), ("#bcbd22", "stale reads")]
    )

    let result: StrategyResult
    let width = 960.0
    let height = 520.0
    let left = 60.0
    let right = 890.0
    /// 2xx answers/s (left axis) and p99 (right axis).
    let top = Panel(y0: 50, y1: 250)
    /// Errors per bucket.
    let middle = Panel(y0: 290, y1: 370)
    /// Anomalies per bucket, stacked by kind.
    let bottom = Panel(y0: 410, y1: 470)

    var seconds: Double {
        let end = result.buckets.last.map { Double($0.startMillis + $0.durationMillis) / 1000 } ?? 0
        return max(end, result.summary.seconds, 0.001)
    }

    func x(_ s: Double) -> Double { left + (right - left) * s / seconds }

    var svg: String {
        let buckets = result.buckets
        // A last bucket shorter than half the others gives a meaningless rate: not drawn as a point.
        let full = buckets.filter { $0.durationMillis * 2 >= result.settings.bucketMillis }
        let rateMax = niceCeiling(full.map(\.answeredPerSecond).max() ?? 0)
        let p99Max = niceCeiling(buckets.compactMap(\.p99Millis).max() ?? 0)
        let errorMax = niceCeiling(Double(buckets.map(\.counts.errors).max() ?? 0))
        let anomalyMax = niceCeiling(Double(buckets.map(\.counts.anomalies).max() ?? 0))
        var out = "<svg viewBox=\"0 0 \(n(width)) \(n(height))\" width=\"\(n(width))\" height=\"\(n(height))\" role=\"img\""
            + " aria-label=\"timeline of \(escape(result.name))\">\n"
        out += axis(top, max: rateMax, side: left, label: "2xx answers/s")
        out += axis(top, max: p99Max, side: right, label: "p99 ms")
        out += axis(middle, max: errorMax, side: left, label: "errors per bucket")
        out += axis(bottom, max: anomalyMax, side: left, label: "anomalies per bucket")
        out += timeAxis()
        for (i, b) in buckets.enumerated() {
            out += bar(b, i, in: middle, max: errorMax, [(b.counts.errors, Self.colors.errors)], "errors")
            let kinds = [b.counts.lostSessions, b.counts.lostUpdates, b.counts.duplicates, b.counts.staleReads]
            out += bar(b, i, in: bottom, max: anomalyMax, zip(kinds, Self.colors.anomalies).map { ($0, $1.0) },
                zip(kinds, Self.colors.anomalies).map { "\($0) \($1.1)" }.joined(separator: ", "))
        }
        out += lines(full.map { ($0, $0.answeredPerSecond) }, max: rateMax, color: Self.colors.answered)
        out += lines(buckets.map { ($0, $0.p99Millis) }, max: p99Max, color: Self.colors.p99)
        for f in result.faults {
            let fx = x(Double(f.atMillis) / 1000)
            out += "<line x1=\"\(n(fx))\" y1=\"\(n(top.y0 - 8))\" x2=\"\(n(fx))\" y2=\"\(n(bottom.y1))\" stroke=\"#000\""
                + " stroke-dasharray=\"4 3\"/>\n"
            out += "<text x=\"\(n(fx + 3))\" y=\"\(n(top.y0 - 10))\">\(escape(f.label))</text>\n"
        }
        out += legend()
        return out + "</svg>\n"
    }

    /// A vertical axis with five ticks on the left or right edge, and its label above.
    private func axis(_ panel: Panel, max: Double, side: Double, label: String) -> String {
        let anchor = side == left ? "end" : "start"
        var out = "<line x1=\"\(n(side))\" y1=\"\(n(panel.y0))\" x2=\"\(n(side))\" y2=\"\(n(panel.y1))\" stroke=\"#999\"/>\n"
        for k in 0...4 {
            let value = max * Double(k) / 4
            let y = panel.y(value, max: max)
            if side == left {
                out += "<line x1=\"\(n(left))\" y1=\"\(n(y))\" x2=\"\(n(right))\" y2=\"\(n(y))\" stroke=\"#eee\"/>\n"
            }
            out += "<text x=\"\(n(side + (side == left ? -4 : 4)))\" y=\"\(n(y + 4))\" text-anchor=\"\(anchor)\">\(tick(value))</text>\n"
        }
        let labelX = side == left ? 4 : width - 4
        return out + "<text x=\"\(n(labelX))\" y=\"\(n(panel.y0 - 14))\" text-anchor=\"\(side == left ? "start" : "end")\">\(label)</text>\n"
    }

    private func timeAxis() -> String {
        var out = ""
        let step = niceCeiling(seconds / 10)
        var t = 0.0
        while t <= seconds + 1e-9 {
            out += "<text x=\"\(n(x(t)))\" y=\"\(n(bottom.y1 + 16))\" text-anchor=\"middle\">\(tick(t))s</text>\n"
            t += step
        }
        return out
    }

    /// Polylines through the bucket midpoints, broken where a bucket has no value.
    private func lines(_ points: [(TimelineBucket, Double?)], max: Double, color: String) -> String {
        var runs: [[String]] = [[]]
        for (b, value) in points {
            guard let value else {
                if !runs[runs.count - 1].isEmpty { runs.append([]) }
                continue
            }
            let mid = Double(b.startMillis) / 1000 + Double(b.durationMillis) / 2000
            runs[runs.count - 1].append("\(n(x(mid))),\(n(top.y(value, max: max)))")
        }
        return runs.filter { !$0.isEmpty }.map { run in
            // A lone point still shows, as a short dash.
            let points = run.count == 1 ? [run[0], run[0].replacingFirstNumber(by: 2)] : run
            return "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(points.joined(separator: " "))\"/>\n"
        }.joined()
    }

    /// One bucket's stacked bar of (count, color) segments, with a tooltip.
    private func bar(_ b: TimelineBucket, _ index: Int, in panel: Panel, max: Double, _ segments: [(Int, String)],
        _ title: String) -> String
    {
        guard segments.contains(where: { $0.0 > 0 }) else { return "" }
        let x0 = x(Double(b.startMillis) / 1000)
        let w = Swift.max(1, x(Double(b.startMillis + b.durationMillis) / 1000) - x0)
        var base = 0
        var out = "<g><title>\(fixed(Double(b.startMillis) / 1000, 2)) s: \(title)</title>"
        for (count, color) in segments where count > 0 {
            let y = panel.y(Double(base + count), max: max)
            out += "<rect x=\"\(n(x0))\" y=\"\(n(y))\" width=\"\(n(w))\" height=\"\(n(panel.y(Double(base), max: max) - y))\" fill=\"\(color)\"/>"
            base += count
        }
        return out + "</g>\n"
    }

    private func legend() -> String {
        let items = [(Self.colors.answered, "2xx answers/s"), (Self.colors.p99, "p99 latency"), (Self.colors.errors, "errors")]
            + Self.colors.anomalies
        var out = ""
        for (k, (color, label)) in items.enumerated() {
            let lx = left + Double(k) * 118
            out += "<rect x=\"\(n(lx))\" y=\"\(n(height - 20))\" width=\"12\" height=\"12\" fill=\"\(color)\"/>"
                + "<text x=\"\(n(lx + 16))\" y=\"\(n(height - 10))\">\(label)</text>\n"
        }
        return out
    }
}

extension String {
    /// "x,y" with x moved right by `dx` (a lone point drawn as a dash).
    fileprivate func replacingFirstNumber(by dx: Double) -> String {
        let parts = split(separator: ",")
        guard parts.count == 2, let x = Double(parts[0]) else { return self }
        return "\(n(x + dx)),\(parts[1])"
    }
}

/// The smallest of 1, 2, 5 × 10^k that is ≥ `value` (1 for 0).
private func niceCeiling(_ value: Double) -> Double {
    guard value > 0, value.isFinite else { return 1 }
    var scale = 1.0
    while scale * 10 <= value { scale *= 10 }
    while scale > value { scale /= 10 }
    for m in [1.0, 2, 5, 10] where m * scale >= value { return m * scale }
    return 10 * scale
}

/// A tick label: no trailing zeros (`0.5`, `12.5`, `2`).
private func tick(_ value: Double) -> String {
    var text = fixed(value, 2)
    while text.contains("."), text.hasSuffix("0") || text.hasSuffix(".") { text.removeLast() }
    return text
}

/// A coordinate with one decimal.
private func n(_ value: Double) -> String { fixed(value, 1) }

/// Escapes text for HTML element content and attribute values.
func escape(_ text: String) -> String {
    var out = ""
    for c in text {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(c)
        }
    }
    return out
}
