import ClusterLocks
import Logging
import PostgresLocks
import SessionRedis
import ZooKeeperLocks

/// The lock services a node or a lock benchmark can use (`--lock-backend`).
public enum LockBackend: String, CaseIterable, Sendable {
    /// `RedisLock`: one Redis master (or a Redis Cluster), leases as key TTLs.
    case redis
    /// `PostgresTableLock`: a row per lock, the lease on the database's clock.
    case postgres
    /// `PostgresAdvisoryLock`: `pg_advisory_lock`, held by its connection.
    case postgresAdvisory = "postgres-advisory"
    /// `ZooKeeperLock`: ephemeral sequential nodes, held as long as the holder's session.
    case zookeeper

    /// The names `--lock-backend` accepts, for help and errors.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// Parses a `--lock-backend` value; the error lists the accepted names.
    public static func named(_ name: String) throws(LockError) -> LockBackend {
        guard let backend = LockBackend(rawValue: name) else {
            throw LockError(.invalidArgument, "unknown lock backend '\(name)'; available: \(names)")
        }
        return backend
    }

    /// Where each backend's service is.
    public struct Endpoints: Sendable {
        /// For `redis`.
        public var redis: RedisClient?
        /// For `postgres` and `postgres-advisory`.
        public var postgres: PostgresConfiguration?
        /// For `zookeeper`.
        public var zookeeper: ZooKeeperConfiguration?

        public init(
            redis: RedisClient? = nil, postgres: PostgresConfiguration? = nil, zookeeper: ZooKeeperConfiguration? = nil
        ) {
            self.redis = redis
            self.postgres = postgres
            self.zookeeper = zookeeper
        }

        /// The endpoints of their command-line forms (`--redis`, `--postgres`, `--zookeeper`); nil
        /// leaves one out. Nothing is contacted. A bad Redis URL is `LockError(.invalidArgument)`.
        public static func parse(
            redis: String?, postgres: String?, zookeeper: String?, zookeeperSessionMillis: Int = 3_000, logger: Logger
        ) throws(LockError) -> Endpoints {
            var client: RedisClient?
            if let redis {
                do {
                    client = RedisClient(configuration: try RedisConfiguration(url: redis), logger: logger)
                } catch {
                    throw LockError(.invalidArgument, "--redis: \((error as? RedisError)?.message ?? "\(error)")")
                }
            }
            return Endpoints(
                redis: client, postgres: postgres.map { PostgresConfiguration(url: $0) },
                zookeeper: zookeeper.map { ZooKeeperConfiguration(connect: $0, sessionTimeoutMillis: zookeeperSessionMillis) })
        }
    }

    /// This backend's service at `endpoints`; `namespace` keeps its keys or rows apart (a Redis key
    /// prefix, a PostgreSQL table: lower-case letters, digits and `_`). Nothing is contacted yet.
    public func makeService(_ endpoints: Endpoints, namespace: String, logger: Logger) throws -> any LockService {
        switch self {
        case .redis:
            guard let client = endpoints.redis else { throw LockError(.invalidArgument, "the redis lock backend needs Redis") }
            return RedisLock(client: client, keyPrefix: namespace + ":", logger: logger)
        case .postgres:
            guard let postgres = endpoints.postgres else {
                throw LockError(.invalidArgument, "the postgres lock backend needs --postgres")
            }
            return PostgresTableLock(configuration: postgres, table: namespace, logger: logger)
        case .postgresAdvisory:
            guard let postgres = endpoints.postgres else {
                throw LockError(.invalidArgument, "the postgres-advisory lock backend needs --postgres")
            }
            return PostgresAdvisoryLock(configuration: postgres, sequence: namespace + "_fence", logger: logger)
        case .zookeeper:
            guard let zookeeper = endpoints.zookeeper else {
                throw LockError(.invalidArgument, "the zookeeper lock backend needs --zookeeper")
            }
            return ZooKeeperLock(configuration: zookeeper, namespace: namespace, logger: logger)
        }
    }
}
