/// Reads Prometheus text format, as the probes of the supervisor and the benchmark get it from `/metrics`.
public enum PrometheusText {
    /// The value of the first sample of `metric` (with or without labels), if any.
    public static func sample(_ metric: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(metric) {
            let rest = line.dropFirst(metric.count)
            guard rest.first == "{" || rest.first == " " else { continue }
            if let value = line.split(separator: " ").last, let number = Double(value) { return Int(number) }
        }
        return nil
    }
}
