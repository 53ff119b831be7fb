import Foundation
import MiniHTTP

/// What the supervisor asks its nodes on loopback: readiness and metrics.
enum NodeProbe {
    /// `GET path` on the node, with its body; nil on any failure or after `timeoutMillis`.
    static func get(port: Int, path: String, timeoutMillis: Int) -> BlockingGET.Answer? {
        BlockingGET.fetch(
            host: "127.0.0.1", port: port, path: path, timeoutMillis: timeoutMillis,
            userAgent: "session-cluster-supervisor")
    }

    /// The `reason` (else the `status`) of a `/healthz` answered 503; nil for any other answer.
    static func refusal(_ answer: BlockingGET.Answer) -> String? {
        guard answer.status == 503,
            let json = try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any]
        else { return nil }
        return (json["reason"] as? String) ?? (json["status"] as? String) ?? "unavailable"
    }
}
