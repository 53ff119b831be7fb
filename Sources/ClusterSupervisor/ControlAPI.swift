import Balancer
import MiniHTTP
import SystemSupport

/// The supervisor's control API, served by the balancer on the cluster's own port:
///
/// - `GET /_cluster/status`: strategy, balancer totals and, per node, its state
///   (starting, running, stopped, dead, restarting), the balancer's view of its
///   health and why it gets fewer requests now (`balancerNote`), requests the balancer
///   sent it, sessions it holds, PID, restarts and how its last process ended;
/// - `POST /_cluster/nodes/NAME/kill|stop|resume|restart`: 200 with the node's new
///   state, 404 for an unknown node, 409 when the action does not fit its state;
/// - `POST /_cluster/nodes/NAME/isolate`: cuts the node off from the other nodes and its
///   store (`ClusterSupervisor.partition`; 409 when links are not relayed); `POST /_cluster/heal`
///   heals every cut link;
/// - `POST /_cluster/redis/NAME/kill|restart`: the same for a private redis-server
///   (`redis` for the `redis` strategy, `redis-1`... and `sentinel-1` with replicas or a
///   Sentinel, `redis-1`... for `redis-cluster`); a restart answers at once with state `restarting`.
///
/// Per node, the status also gives `refusing` (why its `/healthz` answers 503 while it runs:
/// rejoining without a majority, its store unreachable; null otherwise) and, with relayed links,
/// `reaches` (the nodes and `redis` its links reach now); `partitions` says whether links are
/// relayed and which are cut.
///
/// The status lists the redis-servers in `redisNodes`: name, port, PID, state
/// (`up`, `down` or `restarting`), role (`master`, `replica` or `sentinel`), the master
/// (`host:port`: a replica's, or the one a Sentinel names), slots served, keys
/// held and, in a cluster, the cluster state each sees (`ok` or `fail`); null where
/// unknown. `redis` has the first redis-server's port and PID (`redis` strategy);
/// `redisSentinel` is true when a Sentinel fails the master over.
///
/// Other web pages the operator has open must not drive it, so every control
/// request is refused with 403 unless (see `OperatorAccess`):
/// - its `Host` is one of the demo's own addresses (`allowedHosts`): a DNS
///   rebinding page's requests carry its own host name;
/// - its `Origin`, if sent, is `http://` and that `Host`: no cross-origin caller;
/// - anything but a GET carries `X-Cluster-Control: 1`: a custom header, which a form, a beacon
///   or a `no-cors` fetch cannot send, and a cross-origin `fetch` can only send after
///   a CORS preflight that this API never grants.
///
/// When the demo listens beyond loopback, anyone on the network reaches this API too: then
/// every control request needs `Authorization: Bearer TOKEN` (`ClusterConfiguration.controlToken`,
/// 401 without it); the dashboard takes the token from its address's `#token=` fragment.
public enum ControlAPI {
    public static let prefix = "/_cluster/"
    /// The header every state-changing (non-GET) control request must carry, and its value.
    public static let controlHeader = (name: "X-Cluster-Control", value: "1")

    /// The `Host` values control requests may carry: `127.0.0.1`, `localhost`, `[::1]` and
    /// `listenHost`, each with `:port` (and also bare when `port` is 80, as browsers send it); lowercase.
    public static func allowedHosts(listenHost: String, port: Int) -> [String] {
        OperatorAccess.localHosts(listenHost: listenHost, port: port)
    }

    /// A 403 (or 401) answer when `head` is not a request the operator's own tools make (see the
    /// type's documentation), nil when it may go on.
    static func refusal(_ head: HTTPRequestHead, allowedHosts: [String], token: String? = nil) -> HTTPResponse? {
        OperatorAccess(allowedHosts: allowedHosts, token: token.map { Array($0.utf8) }, requiredHeader: controlHeader)
            .refusal(method: head.method, headers: head.headers, what: "control requests")
    }

    /// Answers one control request (called on a balancer loop: nothing here blocks for long).
    public static func respond(to supervisor: ClusterSupervisor, head: HTTPRequestHead) -> HTTPResponse {
        if let refused = refusal(head, allowedHosts: supervisor.controlHosts, token: supervisor.configuration.controlToken) {
            return refused
        }
        let (method, path) = (head.method, head.path)
        let parts = path.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        switch (method, parts.count) {
        case ("GET", 1) where parts[0] == "status":
            var response = HTTPResponse.json(statusJSON(supervisor))
            response.headers.add(name: "Cache-Control", value: "no-store")
            return response
        case (_, 1) where parts[0] == "rolling-restart":
            return rollingRestart(supervisor, method: method)
        case ("POST", 1) where parts[0] == "heal":
            supervisor.healPartition()
            return .json("{\"cutLinks\":[]}")
        case ("POST", 3) where parts[0] == "redis":
            return redisAction(supervisor, name: String(parts[1]), action: String(parts[2]))
        case ("POST", 3) where parts[0] == "nodes":
            let name = String(parts[1])
            do throws(SupervisorError) {
                switch parts[2] {
                case "kill": try supervisor.kill(name)
                case "stop": try supervisor.stop(name)
                case "resume": try supervisor.resume(name)
                case "restart": try supervisor.restart(name)
                case "isolate":
                    guard supervisor.partitionsAvailable else {
                        throw SupervisorError(kind: .conflict, "this cluster's links are not relayed: no partitions")
                    }
                    _ = try supervisor.slot(name)
                    try supervisor.partition([[name]])
                default:
                    return .error(
                        status: 404, code: "not_found",
                        message: "unknown action '\(parts[2])'; use kill, stop, resume, restart or isolate")
                }
            } catch {
                let status = error.kind == .notFound ? 404 : error.kind == .conflict ? 409 : 500
                return .error(status: status, code: error.kind.rawValue, message: error.message)
            }
            let node = try? supervisor.slot(name)
            return .json("{\"node\":\(jsonQuoted(name)),\"state\":\(jsonQuoted(node?.state.rawValue ?? "unknown"))}")
        case (_, 1) where parts[0] == "status" || parts[0] == "heal", (_, 3) where parts[0] == "nodes" || parts[0] == "redis":
            var response = HTTPResponse.error(status: 405, code: "method_not_allowed", message: "\(method) is not allowed on \(path)")
            response.headers.add(name: "Allow", value: parts.count == 1 && parts[0] == "status" ? "GET" : "POST")
            return response
        default:
            return .error(status: 404, code: "not_found", message: "no control endpoint \(method) \(path)")
        }
    }

    /// `POST /_cluster/redis/NAME/kill|restart`.
    private static func redisAction(_ supervisor: ClusterSupervisor, name: String, action: String) -> HTTPResponse {
        do throws(SupervisorError) {
            switch action {
            case "kill": try supervisor.killRedis(name)
            case "restart": try supervisor.restartRedis(name)
            default:
                return .error(status: 404, code: "not_found", message: "unknown action '\(action)'; use kill or restart")
            }
        } catch {
            let status = error.kind == .notFound ? 404 : error.kind == .conflict ? 409 : 500
            return .error(status: status, code: error.kind.rawValue, message: error.message)
        }
        let state = action == "restart" ? "restarting" : "down"
        return .json("{\"redis\":\(jsonQuoted(name)),\"state\":\(jsonQuoted(state))}")
    }

    /// One redis-server in the status JSON.
    static func redisNodeJSON(_ status: RedisNodeStatus, restarting: Bool) -> String {
        let state = restarting ? "restarting" : status.up ? "up" : "down"
        func number(_ value: Int?) -> String { value.map(String.init) ?? "null" }
        return "{\"name\":\(jsonQuoted(status.name)),\"port\":\(status.port),\"pid\":\(number(status.pid.map(Int.init))),"
            + "\"state\":\(jsonQuoted(state)),\"role\":\(status.role.map(jsonQuoted) ?? "null"),"
            + "\"master\":\(status.master.map(jsonQuoted) ?? "null"),"
            + "\"slots\":\(number(status.slots)),\"keys\":\(number(status.keys)),"
            + "\"clusterState\":\(status.clusterState.map(jsonQuoted) ?? "null")}"
    }

    /// The cluster as JSON (see the type's documentation).
    static func statusJSON(_ supervisor: ClusterSupervisor) -> String {
        let configuration = supervisor.configuration
        let balancer = supervisor.balancer
        let backends = balancer?.backends ?? []
        let partitions = supervisor.partitionsAvailable
        let nodes = supervisor.nodes.map { node -> String in
            let now = node.snapshot
            let backend = backends.first { $0.name == node.name }
            let sessions = now.sessions.map(String.init) ?? "null"
            let reaches = partitions ? "[" + supervisor.reachable(from: node.name).map(jsonQuoted).joined(separator: ",") + "]" : "null"
            return "{\"name\":\(jsonQuoted(node.name)),\"port\":\(node.port),\"pid\":\(now.process.map { "\($0.pid)" } ?? "null"),"
                + "\"state\":\(jsonQuoted(now.state.rawValue)),\"health\":\(jsonQuoted(backend?.health ?? "unknown")),"
                + "\"requests\":\(backend?.responses ?? 0),\"sessions\":\(sessions),\"restarts\":\(now.restarts),"
                + "\"lastExit\":\(now.lastExit.map(jsonQuoted) ?? "null"),"
                + "\"balancerNote\":\(backend?.reducedShareReason.map(jsonQuoted) ?? "null"),"
                + "\"refusing\":\(now.refusing.map(jsonQuoted) ?? "null"),\"reaches\":\(reaches)}"
        }
        let strategy = jsonQuoted(configuration.strategy.rawValue)
        let mode = configuration.strategy == .replicate ? jsonQuoted(configuration.replicationMode) : "null"
        let single = configuration.strategy == .redis ? supervisor.redisServers.first : nil
        let redis = single.map { "{\"port\":\($0.port),\"pid\":\($0.pid.map { "\($0)" } ?? "null")}" } ?? "null"
        let redisNodes = supervisor.redisStatus.map { redisNodeJSON($0.status, restarting: $0.restarting) }
        var totals = "null"
        if let stats = balancer?.statistics {
            let fields: [(String, Int)] = [
                ("requests", stats.requests), ("retries", stats.retries), ("badGateway", stats.badGateway),
                ("noBackend", stats.noBackend), ("gatewayTimeouts", stats.gatewayTimeouts),
            ]
            totals = "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
        }
        let sentinel = supervisor.redisReplicaSet?.sentinel != nil
        let head: String =
            "{\"strategy\":\(strategy),\"replicationMode\":\(mode),\"redis\":\(redis),\"redisSentinel\":\(sentinel),"
            + "\"balancer\":\(totals),\"rollingRestart\":\(rollingRestartJSON(supervisor.rollingRestartStatus)),"
            + "\"partitions\":{\"available\":\(partitions),\"cutLinks\":["
            + supervisor.cutLinks.map(jsonQuoted).joined(separator: ",") + "]},"
        return head
            + "\"nodes\":[\(nodes.joined(separator: ","))],\"redisNodes\":[\(redisNodes.joined(separator: ","))]}"
    }
}
