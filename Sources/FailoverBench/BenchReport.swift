import Foundation

/// The results of a benchmark: one `StrategyResult` per strategy, rendered
/// as a text table, `report.json` and a self-contained `report.html`.
public struct BenchReport: Sendable, Codable {
    public var title: String
    /// The command line that produced it, for the README.
    public var command: String?
    /// ISO 8601, when the report was made.
    public var createdAt: String
    public var strategies: [StrategyResult]

    public init(title: String = "Failover benchmark", command: String? = nil, createdAt: Date = Date(),
        strategies: [StrategyResult] = [])
    {
        self.title = title
        self.command = command
        self.createdAt = ISO8601DateFormatter().string(from: createdAt)
        self.strategies = strategies
    }

    /// The summary table, one row per strategy (plain text, aligned columns).
    ///
    /// `detect`/`recover` show each fault's times in milliseconds, in the
    /// order of the faults, separated by `/`; `-` means none (see `FailoverAnalysis`).
    public func table() -> String {
        let header = [
            "strategy", "requests", "req/s", "errors", "lost sess", "lost upd", "dupl", "stale", "p50 ms", "p99 ms",
            "p99.9 ms", "max ms", "gap ms", "detect ms", "recover ms",
        ]
        let rows = summaryRows
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                return column == 0 ? cell + pad : pad + cell
            }.joined(separator: "  ")
        }
        var out = ([line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
            + rows.map(line)).joined(separator: "\n")
        for s in strategies where !s.settings.faults.isEmpty {
            out += "\nfaults (\(s.name)): " + s.settings.faults.joined(separator: ", ")
        }
        for s in strategies {
            for marker in s.faults {
                if let error = marker.error { out += "\nFAULT NOT APPLIED (\(s.name)): \(marker.label): \(error)" }
            }
        }
        for s in strategies {
            if s.settings.idempotencyKeys == false { out += "\nwrites (\(s.name)): without Idempotency-Key, not retried" }
            if let share = s.settledShare { out += "\nshare after settling (\(s.name)): " + share.summary }
            if let convergence = s.convergence { out += "\nafter the load (\(s.name)): " + convergence.summary }
        }
        return out + "\n"
    }

    /// The table's cells, one row per strategy.
    var summaryRows: [[String]] {
        strategies.map { s in
            let c = s.summary.counts
            let l = s.summary.latency
            return [
                s.name, "\(c.requests)", fixed(s.summary.answeredPerSecond, 0), "\(c.errors)", "\(c.lostSessions)",
                "\(c.lostUpdates)", "\(c.duplicates)", "\(c.staleReads)", millis(l.p50Millis), millis(l.p99Millis),
                millis(l.p999Millis), millis(l.maxMillis), fixed(s.summary.longestGap.millis, 0),
                perFault(s.faults, \.detectMillis), perFault(s.faults, \.recoverMillis),
            ]
        }
    }

    /// `report.json`: pretty-printed, keys sorted.
    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// Writes `report.json` and `report.html` into `directory` (created if
    /// needed); returns the two files.
    @discardableResult
    public func write(to directory: URL) throws -> (json: URL, html: URL) {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let json = directory.appendingPathComponent("report.json")
        let html = directory.appendingPathComponent("report.html")
        try self.json().write(to: json, options: .atomic)
        try Data(self.html().utf8).write(to: html, options: .atomic)
        return (json, html)
    }
}

private func millis(_ value: Double?) -> String {
    value.map { fixed($0, $0 < 10 ? 2 : 1) } ?? "-"
}

private func perFault(_ markers: [FaultMarker], _ field: KeyPath<FaultMarker, Int?>) -> String {
    markers.isEmpty ? "-" : markers.map { $0[keyPath: field].map(String.init) ?? "-" }.joined(separator: "/")
}
