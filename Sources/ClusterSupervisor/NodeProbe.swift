import MiniHTTP

/// What the supervisor asks its nodes on loopback: readiness and metrics.
enum NodeProbe {
    /// `GET path` on the node, with its body; nil on any failure or after `timeoutMillis`.
    static func get(port: Int, path: String, timeoutMillis: Int) -> BlockingGET.Answer? {
        BlockingGET.fetch(
            host: "127.0.0.1", port: port, path: path, timeoutMillis: timeoutMillis,
            userAgent: "session-cluster-supervisor")
    }

    /// The value of the first sample of `metric` in Prometheus text, if any.
    static func sample(_ metric: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(metric) {
            let rest = line.dropFirst(metric.count)
            guard rest.first == "{" || rest.first == " " else { continue }
            if let value = line.split(separator: " ").last, let number = Double(value) { return Int(number) }
        }
        return nil
    }
}
