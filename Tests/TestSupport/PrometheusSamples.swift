/// The samples of a Prometheus text exposition: each series as written (`name{labels}`, or
/// `name` alone) and its value. Comment lines (`# TYPE`, `# HELP`) are skipped.
public func prometheusSamples(_ text: String) -> [String: Double] {
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        samples[String(line[..<space])] = value
    }
    return samples
}

/// The metric names of a Prometheus text exposition's samples (histograms show as their
/// `_bucket`, `_sum` and `_count` series).
public func prometheusNames(_ text: String) -> Set<String> {
    Set(prometheusSamples(text).keys.map { String($0.prefix { $0 != "{" }) })
}
