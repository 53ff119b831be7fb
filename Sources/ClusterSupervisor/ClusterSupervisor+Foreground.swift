import Logging
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

extension ClusterSupervisor {
    /// `session-cluster demo` in the foreground: starts the cluster, prints
    /// `welcome` and every supervisor event with the time of day, waits for
    /// SIGTERM or SIGINT, then stops everything it started and says so.
    public static func runInForeground(configuration: ClusterConfiguration, logger: Logger) throws(SupervisorError) {
        let supervisor = try ClusterSupervisor(configuration: configuration, logger: logger) { event in
            print("[\(localTimeOfDay())] \(event)")
            fflush(nil)
        }
        let count = configuration.nodeCount
        print("starting \(count) node\(count == 1 ? "" : "s") (strategy \(configuration.strategy.rawValue)) ...")
        fflush(nil)
        try supervisor.start()
        print(supervisor.welcome)
        fflush(nil)
        let signal = waitForTerminationSignal()
        let redis =
            switch configuration.strategy {
            case .redis: configuration.redisReplicas > 0 || configuration.redisSentinel ? " and the redis-servers" : " and redis-server"
            case .redisCluster: " and the Redis Cluster"
            case .replicate, .local: ""
            }
        print("[\(localTimeOfDay())] signal \(signal): stopping the balancer, the nodes\(redis)")
        fflush(nil)
        supervisor.shutdown()
        print("[\(localTimeOfDay())] stopped")
    }
}
