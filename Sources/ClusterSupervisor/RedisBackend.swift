#if canImport(Glibc)
import Glibc
#endif

/// The private Redis of the `redis` and `redis-cluster` strategies.
enum RedisBackend: Sendable {
    /// `redis`: one redis-server, named `redis`.
    case single(PrivateRedisServer)
    /// `redis` with replicas (and perhaps a Sentinel): `redis-1`, `redis-2`..., `sentinel-1`.
    case replicaSet(PrivateRedisReplicaSet)
    /// `redis-cluster`.
    case cluster(PrivateRedisCluster)

    /// Every process, data servers and Sentinel alike, in the order the status shows them.
    var servers: [PrivateRedisServer] {
        switch self {
        case .single(let server): [server]
        case .replicaSet(let set): set.servers
        case .cluster(let cluster): cluster.servers
        }
    }
}

extension ClusterSupervisor {
    /// Starts the strategy's private redis-server, replica set or Redis Cluster (none for the others).
    func startRedis() throws(SupervisorError) {
        let backend: RedisBackend
        switch configuration.strategy {
        case .redis where configuration.redisReplicas == 0 && !configuration.redisSentinel:
            let server = try PrivateRedisServer(name: "redis", directory: runDirectory, executable: configuration.redisServer)
            backend = .single(server)
            onEvent("redis-server on \(server.address) (pid \(server.pid ?? 0))")
        case .redis:
            let set = try PrivateRedisReplicaSet(
                replicas: configuration.redisReplicas, sentinel: configuration.redisSentinel, directory: runDirectory,
                redisServer: configuration.redisServer)
            backend = .replicaSet(set)
            let servers = set.servers.map { "\($0.name) :\($0.port) (pid \($0.pid ?? 0))" }
            let sentinel = set.sentinel.map { " watched by \($0.name), which names the master '\(set.masterName)'" } ?? ""
            onEvent("redis-server primary and \(set.replicas.count) replica(s)\(sentinel): \(servers.joined(separator: ", "))")
        case .redisCluster:
            let cluster = try PrivateRedisCluster(
                primaries: configuration.redisClusterPrimaries, replicasPerPrimary: configuration.redisClusterReplicas,
                nodeTimeoutMillis: configuration.redisClusterNodeTimeoutMillis, directory: runDirectory,
                redisServer: configuration.redisServer)
            backend = .cluster(cluster)
            let servers = cluster.servers.map { "\($0.name) :\($0.port) (pid \($0.pid ?? 0))" }
            onEvent("Redis Cluster of \(cluster.servers.count) redis-servers: \(servers.joined(separator: ", "))")
        case .replicate, .local:
            return
        }
        setRedisBackend(backend)
        if configuration.relayedLinks, case .single(let server) = backend {
            try makeStoreRelays(to: server.port)
        }
        refreshRedisStatus()
    }

    /// How node `name` reaches the private Redis: `--redis URL` (through its store relay when links
    /// are relayed), `--redis-sentinel ADDRESS --redis-master NAME` or `--redis-cluster SEEDS`; none
    /// for the strategies without Redis.
    func redisNodeArguments(for name: String) throws(SupervisorError) -> [String] {
        guard configuration.strategy == .redis || configuration.strategy == .redisCluster else { return [] }
        switch redisBackend {
        case .single(let server):
            if let relay = storeRelays.withLock({ $0["\(name)>redis"] }) { return ["--redis", "redis://127.0.0.1:\(relay.port)/0"] }
            return ["--redis", "redis://\(server.address)/0"]
        case .replicaSet(let set):
            if let sentinel = set.sentinel {
                return ["--redis-sentinel", sentinel.address, "--redis-master", set.masterName]
            }
            return ["--redis", "redis://\(set.primary.address)/0"]  // the replicas are only copies
        case .cluster(let cluster):
            return ["--redis-cluster", cluster.seeds.joined(separator: ",")]
        case nil:
            throw SupervisorError("the private Redis is not running")
        }
    }

    /// What the death of `server` means for the nodes (for the event the monitor reports).
    func redisDeathConsequence(_ server: PrivateRedisServer) -> String {
        switch redisBackend {
        case .single, nil:
            return "the nodes answer 503 without it"
        case .replicaSet(let set):
            if server === set.sentinel { return "the nodes keep their master, but no failover happens until it is back" }
            if set.sentinel != nil {
                return "if it was the master, \(set.sentinel?.name ?? "the Sentinel") promotes a replica within a few seconds"
            }
            return server === set.primary ? "the nodes answer 503 without it" : "it was only a copy"
        case .cluster:
            return "its replica takes over its slots if it was a primary"
        }
    }
}
