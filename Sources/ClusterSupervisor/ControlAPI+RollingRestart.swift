import MiniHTTP
import SystemSupport

/// `POST /_cluster/rolling-restart` (like every POST of the control API, with `X-Cluster-Control: 1`):
/// the supervisor restarts every node in turn (`ClusterSupervisor.rollingRestart()`). Answers 202
/// at once with `{"rollingRestart":"started","order":["node-1",...]}`; 409 while one runs or the
/// demo is stopping; 405 for other methods.
///
/// `GET /_cluster/status` shows it under `rollingRestart`: `inProgress`, `node` (being restarted,
/// or the last one tried), `step` (1-based) of `order`, and `result` (`done` or `stopped: why`) once
/// one has ended; `inProgress` false and the rest empty before the first.
extension ControlAPI {
    static func rollingRestart(_ supervisor: ClusterSupervisor, method: String) -> HTTPResponse {
        guard method == "POST" else {
            var response = HTTPResponse.error(
                status: 405, code: "method_not_allowed", message: "\(method) is not allowed on \(prefix)rolling-restart")
            response.headers.add(name: "Allow", value: "POST")
            return response
        }
        do throws(SupervisorError) {
            let order = try supervisor.rollingRestart()
            return .json(
                "{\"rollingRestart\":\"started\",\"order\":[\(order.map(jsonQuoted).joined(separator: ","))]}", status: 202)
        } catch {
            let status = error.kind == .notFound ? 404 : error.kind == .conflict ? 409 : 500
            return .error(status: status, code: error.kind.rawValue, message: error.message)
        }
    }

    /// The `rollingRestart` object of the status JSON.
    static func rollingRestartJSON(_ status: RollingRestartStatus) -> String {
        "{\"inProgress\":\(status.inProgress),\"node\":\(status.node.map(jsonQuoted) ?? "null"),"
            + "\"step\":\(status.step.map(String.init) ?? "null"),"
            + "\"order\":[\(status.order.map(jsonQuoted).joined(separator: ","))],"
            + "\"result\":\(status.result.map(jsonQuoted) ?? "null")}"
    }
}
