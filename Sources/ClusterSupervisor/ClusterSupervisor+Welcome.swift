extension ClusterSupervisor {
    /// What `session-cluster demo` prints once the cluster is up: the dashboard's address (with
    /// the control token in its fragment, when there is one), the nodes, commands to try, and
    /// what to expect of the strategy.
    public var welcome: String {
        let configuration = configuration
        let host = configuration.host
        let base = "http://\(host.contains(":") ? "[\(host)]" : host):\(port)"
        let token = configuration.controlToken
        let dashboard = token.map { "\(base)/#token=\($0)" } ?? "\(base)/"
        let auth = token.map { " -H 'Authorization: Bearer \($0)'" } ?? ""
        let nodeList = nodePorts.map { "\($0.name) :\($0.port)" }.joined(separator: ", ")
        let strategy = configuration.strategy
        let mode = strategy == .replicate ? " (\(configuration.replicationMode))" : ""
        return """

            SessionCluster demo — \(configuration.nodeCount) nodes, strategy '\(strategy.rawValue)'\(mode)
              dashboard  \(dashboard)
              nodes      \(nodeList), logs in \(logDirectoryPath)
              try        curl -c /tmp/sc.jar -b /tmp/sc.jar -X POST \(base)/api/counter    (again: another node answers)
                         curl -X POST -H 'X-Cluster-Control: 1'\(auth) \(base)/_cluster/nodes/node-1/kill    (then count on)
                         curl\(auth) \(base)/_cluster/status
              expect     \(expectation)
            Ctrl-C stops everything.

            """
    }

    private var expectation: String {
        if configuration.redisSentinel {
            return "sessions survive a killed node, and a killed Redis primary (redis-1) once the Sentinel promoted its replica (a few seconds)"
        }
        return switch configuration.strategy {
        case .replicate: "sessions survive a killed node: every node holds a copy"
        case .redis: "sessions survive a killed node: they live in Redis"
        case .redisCluster: "sessions survive a killed node, and a killed Redis primary once its replica took over"
        case .local: "sessions break: each node knows only its own (the control experiment)"
        }
    }
}
