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
            "p50 ms", "p99 ms", "p99.9 ms", "longest gap ms", "detect ms", "recover ms",
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
        (fixed rate). Longest gap: the longest time a user went without a 2xx answer. Detect: from a fault to \
        the first error or anomaly. Recover: from a fault to the first bucket after which buckets have no errors \
        and at least 90% of the pre-fault median throughput.</p>

        """
    }

    private func section(_ s: StrategyResult) -> String {
        var out = "<section><h2>\(escape(s.name))</h2>\n<p class=\"note\">\(escape(s.target)) · \(s.settings.users) users"
        if let rate = s.settings.rate { out += " · \(fixed(rate, 0)) req/s fixed rate" }
        out += " · \(fixed(s.summary.seconds, 1)) s · \(s.summary.retries) retries · \(s.summary.connections) connections"
        let nodes = s.summary.nodes.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        if !nodes.isEmpty { out += " · served by " + escape(nodes.joined(separator: ", ")) }
        out += "</p>\n"
        for f in s.faults {
            out += "<p class=\"note\">\(escape(f.label)) at \(fixed(Double(f.atMillis) / 1000, 2)) s: detect "
                + (f.detectMillis.map { "\($0) ms" } ?? "none") + ", recover "
                + (f.recoverMillis.map { "\($0) ms" } ?? "not within the window")
                + (f.error.map { " — failed: " + escape($0) } ?? "") + "</p>\n"
        }
        return out + TimelineChart(result: s).svg + "</section>\n"
    }
}

/// The SVG timeline of one strategy.
private struct TimelineChart {
    let result: StrategyResult
    let width = 960.0
    let height = 430.0
    let left = 60.0
    let right = 890.0
    /// Top panel (answers/s, p99) and bottom panel (errors, anomalies): top and bottom y.
    let top = (y0: 40.0, y1: 250.0)
    let bottom = (y0: 290.0, y1: 390.0)

    var seconds: Double {
        let end = result.buckets.last.map { Double($0.startMillis + $0.durationMillis) / 1000 } ?? 0
        return max(end, result.summary.seconds, 0.001)
    }

    func x(_ s: Double) -> Double { left + (right - left) * s / seconds }

    var svg: String {
        let buckets = result.buckets
        let rateMax = niceCeiling(buckets.map(\.answeredPerSecond).max() ?? 0)
        let p99Max = niceCeiling(buckets.compactMap(\.p99Millis).max() ?? 0)
        let issueMax = niceCeiling(Double(buckets.map { $0.counts.errors + $0.counts.anomalies }.max() ?? 0))
        var out = "<svg viewBox=\"0 0 \(n(width)) \(n(height))\" width=\"\(n(width))\" height=\"\(n(height))\" role=\"img\""
            + " aria-label=\"timeline of \(escape(result.name))\">\n"
        out += axis(panel: top, max: rateMax, side: left, label: "2xx answers/s", anchor: "end")
        out += axis(panel: top, max: p99Max, side: right, label: "p99 ms", anchor: "start")
        out += axis(panel: bottom, max: issueMax, side: left, label: "per bucket", anchor: "end")
        out += timeAxis()
        for (i, b) in buckets.enumerated() {
            let x0 = x(Double(b.startMillis) / 1000)
            let w = max(0.5, x(Double(b.startMillis + b.durationMillis) / 1000) - x0)
            let h = bottom.y1 - bottom.y0
            let errors = h * Double(b.counts.errors) / issueMax
            let anomalies = h * Double(b.counts.anomalies) / issueMax
            if errors > 0 { out += rect(x0, bottom.y1 - errors, w, errors, "#d62728", "bucket \(i): \(b.counts.errors) errors") }
            if anomalies > 0 {
                out += rect(x0, bottom.y1 - errors - anomalies, w, anomalies, "#ff7f0e",
                    "bucket \(i): \(b.counts.lostSessions) lost sessions, \(b.counts.lostUpdates) lost updates, "
                        + "\(b.counts.duplicates) duplicates, \(b.counts.staleReads) stale reads")
            }
        }
        out += line(buckets.map { ($0, $0.answeredPerSecond) }, max: rateMax, color: "#1f77b4")
        out += line(buckets.compactMap { b in b.p99Millis.map { (b, $0) } }, max: p99Max, color: "#9467bd")
        for f in result.faults {
            let fx = x(Double(f.atMillis) / 1000)
            out += "<line x1=\"\(n(fx))\" y1=\"\(n(top.y0 - 8))\" x2=\"\(n(fx))\" y2=\"\(n(bottom.y1))\" stroke=\"#000\""
                + " stroke-dasharray=\"4 3\"/>\n"
            out += "<text x=\"\(n(fx + 3))\" y=\"\(n(top.y0 - 10))\">\(escape(f.label))</text>\n"
        }
        out += legend()
        return out + "</svg>\n"
    }

    private func axis(panel: (y0: Double, y1: Double), max: Double, side: Double, label: String, anchor: String) -> String {
        var out = "<line x1=\"\(n(side))\" y1=\"\(n(panel.y0))\" x2=\"\(n(side))\" y2=\"\(n(panel.y1))\" stroke=\"#999\"/>\n"
        let dx = anchor == "end" ? -4.0 : 4.0
        for k in 0...4 {
            let value = max * Double(k) / 4
            let y = panel.y1 - (panel.y1 - panel.y0) * Double(k) / 4
            if anchor == "end" {
                out += "<line x1=\"\(n(left))\" y1=\"\(n(y))\" x2=\"\(n(right))\" y2=\"\(n(y))\" stroke=\"#eee\"/>\n"
            }
            out += "<text x=\"\(n(side + dx))\" y=\"\(n(y + 4))\" text-anchor=\"\(anchor)\">\(tick(value))</text>\n"
        }
        return out + "<text x=\"\(n(side))\" y=\"\(n(panel.y0 - 22))\" text-anchor=\"\(anchor)\">\(label)</text>\n"
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

    private func line(_ points: [(TimelineBucket, Double)], max: Double, color: String) -> String {
        guard !points.isEmpty else { return "" }
        let coordinates = points.map { b, v in
            "\(n(x(Double(b.startMillis) / 1000 + Double(b.durationMillis) / 2000))),\(n(top.y1 - (top.y1 - top.y0) * v / max))"
        }
        return "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(coordinates.joined(separator: " "))\"/>\n"
    }

    private func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, _ color: String, _ title: String) -> String {
        "<rect x=\"\(n(x))\" y=\"\(n(y))\" width=\"\(n(w))\" height=\"\(n(h))\" fill=\"\(color)\"><title>\(title)</title></rect>\n"
    }

    private func legend() -> String {
        let items = [("#1f77b4", "2xx answers/s"), ("#9467bd", "p99 latency"), ("#d62728", "errors"), ("#ff7f0e", "anomalies")]
        var out = ""
        for (k, (color, label)) in items.enumerated() {
            let lx = left + Double(k) * 150
            out += "<rect x=\"\(n(lx))\" y=\"\(n(height - 18))\" width=\"12\" height=\"12\" fill=\"\(color)\"/>"
                + "<text x=\"\(n(lx + 16))\" y=\"\(n(height - 8))\">\(label)</text>\n"
        }
        return out
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

private func tick(_ value: Double) -> String {
    value == value.rounded() ? "\(Int(value))" : fixed(value, value < 1 ? 2 : 1)
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
