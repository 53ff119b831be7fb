import Dispatch
import Logging
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// Redis connections, shared by all threads: one pool for a single server
/// (found directly or through Sentinel), or one pool per primary of a Redis
/// Cluster, each command routed by its key's slot (`RedisClusterRouter`).
///
/// Broken connections are dropped and replaced on demand; after a failed
/// connect, new attempts wait a backoff (doubling up to a cap) and callers in
/// the meantime fail at once with `.connection` instead of hanging. With a
/// Sentinel endpoint, every new connection asks the sentinels for the current
/// master, so a failover is followed without a restart; a cluster's failover
/// is followed through its slot map.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    let logger: Logger

    private enum Topology {
        case single(RedisNodePool)
        case cluster(RedisClusterRouter)
    }

    private let topology: Topology
    /// The master a sentinel named, until a connection shows it is no master any more.
    private let sentinelMaster = Mutex<(host: String, port: Int)?>(nil)

    public init(configuration: RedisConfiguration, logger: Logger) {
        precondition(configuration.poolSize >= 1, "poolSize must be at least 1")
        self.configuration = configuration
        self.logger = logger
        switch configuration.endpoint {
        case .cluster(let seeds):
            topology = .cluster(RedisClusterRouter(seeds: seeds, configuration: configuration, logger: logger))
        case .direct(let host, let port):
            topology = .single(RedisNodePool(configuration: configuration, logger: logger) {
                try RedisConnection(host: host, port: port, configuration: configuration)
            })
        case .sentinel:
            let box = Box()
            topology = .single(RedisNodePool(configuration: configuration, logger: logger) {
                guard let client = box.client else { throw RedisError(.connection, "the Redis client is gone") }
                return try client.connectToSentinelMaster()
            })
            box.client = self
        }
    }

    /// Whether this client talks to a Redis Cluster.
    public var isCluster: Bool {
        if case .cluster = topology { return true }
        return false
    }

    /// Runs `body` with a connection of its own (to any primary of a
    /// cluster). A connection left broken by `body` is dropped; a healthy one
    /// goes back to the pool.
    public func withConnection<T>(_ body: (RedisConnection) throws -> T) throws -> T {
        try withOwnConnection(slot: nil, body)
    }

    /// Runs `body` with a connection of its own to the server that holds
    /// `key` (the primary of its slot, in a cluster, following redirections:
    /// `body` may run again, and must send commands on keys of that one slot
    /// only).
    public func withConnection<T>(forKey key: [UInt8], _ body: (RedisConnection) throws -> T) throws -> T {
        try withOwnConnection(slot: RedisClusterSlot.of(key: key), body)
    }

    private func withOwnConnection<T>(slot: Int?, _ body: (RedisConnection) throws -> T) throws -> T {
        try onServer(slot: slot) { pool, asking in
            try pool.withOwnConnection(asking: asking) { connection in
                do {
                    return try body(connection)
                } catch let error as RedisError where error.code == .server && error.message.contains("READONLY") {
                    connection.markBroken()  // a demoted master: never reuse this connection
                    throw error
                }
            }
        }
    }

    /// Runs `body` on the server's shared, pipelined connections (single commands and scripts).
    private func withSharedChannel<T>(slot: Int?, _ body: (any RedisChannel) throws -> T) throws -> T {
        try onServer(slot: slot) { pool, asking in try body(RedisSharedChannel(pool: pool, asking: asking)) }
    }

    /// Runs `attempt` with the pool of the server for `slot`: the cluster's
    /// router follows redirections; a single server's pool forgets a
    /// demoted or vanished master (Sentinel then names the new one).
    private func onServer<T>(slot: Int?, _ attempt: (RedisNodePool, _ asking: Bool) throws -> T) throws -> T {
        switch topology {
        case .cluster(let router):
            return try router.route(slot: slot, attempt)
        case .single(let pool):
            do {
                return try attempt(pool, false)
            } catch let notSent as RedisNotSent {
                throw notSent.error
            } catch let error as RedisError where error.code == .server && error.message.contains("READONLY") {
                // Talking to a replica (the old master after a failover): find the master again.
                forgetMaster(pool)
                throw error
            } catch let error as RedisError where error.code == .connection {
                // The server went away: its idle connections are dead too, and with
                // Sentinel the master may have moved — ask again on the next connect.
                forgetMaster(pool)
                throw error
            }
        }
    }

    /// One command; an error reply throws `RedisError(.server)` with Redis's message.
    @discardableResult
    public func send(_ command: String, _ args: any RedisArgument...) throws -> RedisValue {
        try send([command.redisBytes] + args.map(\.redisBytes))
    }

    /// One command from raw argv, sent to the server of its key (see
    /// `routingKey`): on the shared, pipelined connections, except commands
    /// that block the connection (BLPOP, WAIT, …), which get one of their own.
    @discardableResult
    public func send(_ argv: [[UInt8]]) throws -> RedisValue {
        let name = Self.commandName(argv)
        let shared = !Self.blockingCommands.contains(name)
        let slot = isCluster ? Self.routingKey(argv, name: name).map { RedisClusterSlot.of(key: $0) } : nil
        let run = { (channel: any RedisChannel) throws -> RedisValue in
            try channel.command(argv).throwingServerError(context: String(decoding: name, as: UTF8.self))
        }
        return try shared ? withSharedChannel(slot: slot, run) : withOwnConnection(slot: slot, run)
    }

    /// Several commands in one round trip; replies in order (error replies as
    /// `.error`). In a cluster, their keys must share one slot.
    public func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisValue] {
        let slots = Set(commands.compactMap { Self.routingKey($0, name: Self.commandName($0)) }.map { RedisClusterSlot.of(key: $0) })
        guard !isCluster || slots.count <= 1 else {
            throw RedisError(.configuration, "a pipeline on a Redis Cluster must use keys of one slot (got \(slots.count))")
        }
        return try withSharedChannel(slot: slots.first) { connection in
            let replies = try connection.pipeline(commands)
            for case .error(let message) in replies
            where message.hasPrefix("READONLY") || RedisRedirect(errorMessage: message) != nil {
                // A demoted master (withConnection re-resolves), or a cluster redirection (followed).
                throw RedisError(.server, "pipeline: \(message)")
            }
            return replies
        }
    }

    /// Runs a Lua script by EVALSHA (loading it on NOSCRIPT) on the server of
    /// its first key; with `durability`, `WAIT` follows in the same round trip.
    @discardableResult
    public func eval(
        _ script: RedisScript, keys: [[UInt8]], args: [[UInt8]], durability: RedisDurability? = nil
    ) throws -> RedisValue {
        try withSharedChannel(slot: keys.first.map { RedisClusterSlot.of(key: $0) }) {
            try $0.eval(script, keys: keys, args: args, durability: durability)
        }
    }

    /// Commands that hold their connection until something happens: never pipelined with others.
    static let blockingCommands: Set<[UInt8]> = Set([
        "BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF",
        "XREAD", "XREADGROUP", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR",
    ].map { Array($0.utf8) })

    /// Commands without keys: sent to any primary of a cluster.
    static let keylessCommands: Set<[UInt8]> = Set([
        "PING", "INFO", "CLIENT", "CLUSTER", "ROLE", "DBSIZE", "WAIT", "SCRIPT", "FLUSHALL", "FLUSHDB", "CONFIG",
        "TIME", "ECHO", "AUTH", "SELECT", "SCAN", "KEYS", "MEMORY", "ASKING", "READONLY", "HELLO", "COMMAND",
    ].map { Array($0.utf8) })

    /// A command's name in upper case (ASCII), as the sets above hold it.
    static func commandName(_ argv: [[UInt8]]) -> [UInt8] {
        (argv.first ?? []).map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 }
    }

    /// The key that routes `argv` (named `name`) in a cluster: the first key
    /// of EVAL and EVALSHA, the first argument of other commands, none for
    /// commands without keys (PING, INFO, CLIENT, CLUSTER, …).
    static func routingKey(_ argv: [[UInt8]], name: [UInt8]) -> [UInt8]? {
        if name == Array("EVAL".utf8) || name == Array("EVALSHA".utf8) {
            guard argv.count > 3, let count = Int(String(decoding: argv[2], as: UTF8.self)), count > 0 else { return nil }
            return argv[3]
        }
        guard argv.count > 1, !keylessCommands.contains(name) else { return nil }
        return argv[1]
    }

    /// The `CLIENT ID` of a connection this client keeps open, outside the
    /// pool and idle, for as long as the process lives: Redis's view of
    /// whether this process is alive (`CLIENT LIST ID` on any connection).
    /// Pooled connections are no such sign: a timeout or a failover drops
    /// them while the process goes on. Checked with PING at most once a
    /// second, and opened again (with a new ID) when it broke. In a cluster,
    /// IDs are per server: this is the one on the server that holds `key`.
    public func presenceID(forKey key: [UInt8]? = nil) throws -> Int64 {
        switch topology {
        case .single(let pool):
            return try pool.presenceID()
        case .cluster(let router):
            return try router.pool(forSlot: key.map { RedisClusterSlot.of(key: $0) }).presenceID()
        }
    }

    /// `presenceID` on the server `connection` talks to (for a caller that holds one).
    public func presenceID(onServerOf connection: RedisConnection) throws -> Int64 {
        switch topology {
        case .single(let pool):
            return try pool.presenceID()
        case .cluster(let router):
            return try router.pool(for: RedisNodeAddress(host: connection.host, port: connection.port)).presenceID()
        }
    }

    /// Whether Redis answers PING now.
    public func ping() -> Bool { healthProblem() == nil }

    /// nil when Redis answers PING; otherwise what is wrong, for health
    /// checks. A cluster is healthy while any primary answers: a primary
    /// that died fails only the requests for its slots, and only until its
    /// replica takes over — taking every node out of rotation meanwhile
    /// would fail them all.
    public func healthProblem() -> String? {
        do {
            switch topology {
            case .single:
                let reply = try send("PING")
                return reply.string == "PONG" ? nil : "unexpected PING reply \(reply)"
            case .cluster(let router):
                var problems: [String] = []
                for primary in try router.primaries() {
                    do {
                        let reply = try RedisSharedChannel(pool: router.pool(for: primary), asking: false).command(["PING".redisBytes])
                        if reply.string == "PONG" { return nil }
                        problems.append("\(primary): unexpected PING reply \(reply)")
                    } catch let notSent as RedisNotSent {
                        problems.append("\(primary): \(notSent.error.message)")
                    } catch {
                        problems.append("\(primary): \(error)")
                    }
                }
                router.forgetMap()  // no primary answers: ask for the map again next time
                return "no Redis Cluster primary answers: " + problems.joined(separator: "; ")
            }
        } catch {
            return "\(error)"
        }
    }

    /// Drops every idle connection and the presence connections (e.g. at shutdown).
    public func close() {
        switch topology {
        case .single(let pool): pool.close()
        case .cluster(let router): router.close()
        }
    }

    /// Drops the idle connections and the cached master address.
    private func forgetMaster(_ pool: RedisNodePool) {
        pool.dropIdle()
        sentinelMaster.withLock { $0 = nil }
    }

    /// A connection to the master the sentinels name (asking them when none is cached).
    private func connectToSentinelMaster() throws -> RedisConnection {
        guard case .sentinel(let sentinels, let masterName) = configuration.endpoint else {
            throw RedisError(.configuration, "not a Sentinel endpoint")
        }
        do {
            let master = try sentinelMaster.withLock({ $0 }) ?? resolveMaster(sentinels: sentinels, name: masterName)
            let connection = try RedisConnection(host: master.host, port: master.port, configuration: configuration)
            // A sentinel may still name a demoted master for a moment: insist on the master role.
            let role = try connection.command([Array("ROLE".utf8)])
            guard role.array?.first?.string == "master" else {
                throw RedisError(.connection, "\(master.host):\(master.port) is not a master (\(role))")
            }
            sentinelMaster.withLock { $0 = master }
            return connection
        } catch {
            sentinelMaster.withLock { $0 = nil }
            throw error
        }
    }

    /// Asks each sentinel in turn for the master's address.
    private func resolveMaster(
        sentinels: [RedisConfiguration.SentinelAddress], name: String
    ) throws -> (host: String, port: Int) {
        var failures: [String] = []
        for sentinel in sentinels {
            do {
                var sentinelConfiguration = configuration
                sentinelConfiguration.password = nil
                sentinelConfiguration.username = nil
                let connection = try RedisConnection(
                    host: sentinel.host, port: sentinel.port, configuration: sentinelConfiguration, selectDatabase: false)
                let reply = try connection.command(
                    ["SENTINEL".redisBytes, "get-master-addr-by-name".redisBytes, name.redisBytes])
                guard let pair = reply.array, pair.count == 2, let host = pair[0].string,
                    let port = pair[1].string.flatMap({ Int($0) })
                else {
                    failures.append("\(sentinel): no master named '\(name)' (\(reply))")
                    continue
                }
                logger.debug("sentinel names master", metadata: ["sentinel": "\(sentinel)", "master": "\(host):\(port)"])
                return (host, port)
            } catch {
                failures.append("\(sentinel): \(error)")
            }
        }
        throw RedisError(.connection, "no sentinel named a master: " + failures.joined(separator: "; "))
    }
}

/// Holds the client for the Sentinel connect closure, which the client's initializer makes before `self` exists.
private final class Box: @unchecked Sendable {  // written once, in RedisClient.init, before any connect
    weak var client: RedisClient?
}

