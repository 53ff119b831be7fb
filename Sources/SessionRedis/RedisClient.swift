import Dispatch
import Logging
import SessionCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A pool of Redis connections, shared by all threads.
///
/// Broken connections are dropped and replaced on demand; after a failed
/// connect, new attempts wait a backoff (doubling up to a cap) and callers in
/// the meantime fail at once with `.connection` instead of hanging. With a
/// Sentinel endpoint, every new connection asks the sentinels for the current
/// master, so a failover is followed without a restart.
public final class RedisClient: Sendable {
    public let configuration: RedisConfiguration
    let logger: Logger

    private struct Pool {
        var idle: [RedisConnection] = []
        var open = 0
        var nextConnectAllowed: Int64 = 0
        var backoff: Int
        var lastConnectError: RedisError?
        var master: (host: String, port: Int)?
    }

    private let pool: FastLock<Pool>  // taken twice per command by every thread: see FastLock
    private let slots: DispatchSemaphore
    private let presence = Mutex<(connection: RedisConnection, id: Int64, checkedAt: Int64)?>(nil)

    public init(configuration: RedisConfiguration, logger: Logger) {
        precondition(configuration.poolSize >= 1, "poolSize must be at least 1")
        self.configuration = configuration
        self.logger = logger
        pool = FastLock(Pool(backoff: configuration.reconnectBackoffMillis))
        slots = DispatchSemaphore(value: configuration.poolSize)
    }

    /// Runs `body` with a connection of its own. A connection left broken by
    /// `body` is dropped; a healthy one goes back to the pool.
    public func withConnection<T>(_ body: (RedisConnection) throws -> T) throws -> T {
        guard slots.wait(timeout: .now() + .milliseconds(configuration.commandTimeoutMillis)) == .success else {
            throw RedisError(.poolExhausted, "all \(configuration.poolSize) Redis connections busy")
        }
        defer { slots.signal() }
        let connection = try checkOut()
        do {
            let result = try body(connection)
            checkIn(connection)
            return result
        } catch let error as RedisError where error.code == .server && error.message.contains("READONLY") {
            // Talking to a replica (the old master after a failover): find the master again.
            connection.markBroken()
            checkIn(connection)
            forgetMaster()
            throw error
        } catch let error as RedisError where error.code == .connection {
            // The server went away: its idle connections are dead too, and with
            // Sentinel the master may have moved — ask again on the next connect.
            checkIn(connection)
            forgetMaster()
            throw error
        } catch {
            checkIn(connection)
            throw error
        }
    }

    /// One command; an error reply throws `RedisError(.server)` with Redis's message.
    @discardableResult
    public func send(_ command: String, _ args: any RedisArgument...) throws -> RedisValue {
        try send([command.redisBytes] + args.map(\.redisBytes))
    }

    /// One command from raw argv.
    @discardableResult
    public func send(_ argv: [[UInt8]]) throws -> RedisValue {
        try withConnection { connection in
            try connection.command(argv).throwingServerError(context: String(decoding: argv.first ?? [], as: UTF8.self))
        }
    }

    /// Several commands in one round trip; replies in order (error replies as `.error`).
    public func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisValue] {
        try withConnection { connection in
            let replies = try connection.pipeline(commands)
            for case .error(let message) in replies where message.hasPrefix("READONLY") {
                throw RedisError(.server, "pipeline: \(message)")  // a demoted master: withConnection re-resolves
            }
            return replies
        }
    }

    /// Runs a Lua script by EVALSHA, loading it when Redis does not know it (NOSCRIPT).
    @discardableResult
    public func eval(_ script: RedisScript, keys: [[UInt8]], args: [[UInt8]]) throws -> RedisValue {
        try withConnection { try $0.eval(script, keys: keys, args: args) }
    }

    /// The `CLIENT ID` of a connection this client keeps open, outside the
    /// pool and idle, for as long as the process lives: Redis's view of
    /// whether this process is alive (`CLIENT LIST ID` on any connection).
    /// Pooled connections are no such sign: a timeout or a failover drops
    /// them while the process goes on. Checked with PING at most once a
    /// second, and opened again (with a new ID) when it broke.
    public func presenceID() throws -> Int64 {
        try presence.withLock { presence throws -> Int64 in
            let now = monotonicMillis()
            if let current = presence {
                if now - current.checkedAt < 1_000 { return current.id }
                if (try? current.connection.command(["PING".redisBytes]))?.string == "PONG" {
                    presence = (current.connection, current.id, now)
                    return current.id
                }
                presence = nil
            }
            let connection = try connect()
            let id = try connection.clientID()
            _ = try? connection.command(["CLIENT".redisBytes, "SETNAME".redisBytes, "session-cluster-presence".redisBytes])
            presence = (connection, id, now)
            return id
        }
    }

    /// Whether Redis answers PING now.
    public func ping() -> Bool { healthProblem() == nil }

    /// nil when Redis answers PING; otherwise what is wrong, for health checks.
    public func healthProblem() -> String? {
        do {
            let reply = try send("PING")
            return reply.string == "PONG" ? nil : "unexpected PING reply \(reply)"
        } catch {
            return "\(error)"
        }
    }

    /// Drops every idle connection and the presence connection (e.g. at shutdown).
    public func close() {
        pool.withLock {
            $0.open -= $0.idle.count
            $0.idle.removeAll()
        }
        presence.withLock { $0 = nil }
    }

    private func checkOut() throws -> RedisConnection {
        let now = monotonicMillis()
        let decision = pool.withLock { p -> Result<RedisConnection?, RedisError> in
            if let connection = p.idle.popLast() { return .success(connection) }
            if now < p.nextConnectAllowed, let error = p.lastConnectError {
                return .failure(RedisError(
                    error.code, "\(error.message) (next attempt in \(p.nextConnectAllowed - now) ms)"))
            }
            p.open += 1
            return .success(nil)
        }
        switch decision {
        case .success(let connection?):
            return connection
        case .failure(let error):
            throw error
        case .success(nil):
            do {
                let connection = try connect()
                pool.withLock {
                    $0.backoff = configuration.reconnectBackoffMillis
                    $0.lastConnectError = nil
                }
                return connection
            } catch {
                let redisError = error as? RedisError ?? RedisError(.connection, "\(error)")
                let wait = pool.withLock { p -> Int in
                    p.open -= 1
                    p.lastConnectError = redisError
                    let wait = p.backoff
                    p.nextConnectAllowed = monotonicMillis() + Int64(wait)
                    p.backoff = min(p.backoff * 2, configuration.maxReconnectBackoffMillis)
                    p.master = nil
                    return wait
                }
                logger.warning("redis connect failed", metadata: ["error": "\(redisError)", "retry_in_ms": "\(wait)"])
                throw redisError
            }
        }
    }

    private func checkIn(_ connection: RedisConnection) {
        pool.withLock { p in
            if connection.isBroken {
                p.open -= 1
            } else {
                p.idle.append(connection)
            }
        }
    }

    /// Drops the idle connections and the cached master address.
    private func forgetMaster() {
        pool.withLock { p in
            p.open -= p.idle.count
            p.idle.removeAll()
            p.master = nil
        }
    }

    private func connect() throws -> RedisConnection {
        switch configuration.endpoint {
        case .direct(let host, let port):
            return try RedisConnection(host: host, port: port, configuration: configuration)
        case .sentinel(let sentinels, let masterName):
            let master = try pool.withLock({ $0.master }) ?? resolveMaster(sentinels: sentinels, name: masterName)
            let connection = try RedisConnection(host: master.host, port: master.port, configuration: configuration)
            // A sentinel may still name a demoted master for a moment: insist on the master role.
            let role = try connection.command([Array("ROLE".utf8)])
            guard role.array?.first?.string == "master" else {
                pool.withLock { $0.master = nil }
                throw RedisError(.connection, "\(master.host):\(master.port) is not a master (\(role))")
            }
            pool.withLock { $0.master = master }
            return connection
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

/// Milliseconds on the monotonic clock.
func monotonicMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}
