import Dispatch
import Logging
import Synchronization
import SystemSupport

/// The connections to one Redis server, shared by all threads.
///
/// Connections are opened on demand up to `poolSize`; a broken one is
/// dropped. After a failed connect, new attempts wait a backoff (doubling up
/// to a cap) and callers in the meantime fail at once with the last connect
/// error instead of hanging.
final class RedisNodePool: Sendable {
    let configuration: RedisConfiguration
    let logger: Logger
    /// Opens a new connection (to the server, or to the master a sentinel names).
    private let connect: @Sendable () throws -> RedisConnection

    private struct State {
        var idle: [RedisConnection] = []
        var open = 0
        var nextConnectAllowed: Int64 = 0
        var backoff: Int
        var lastConnectError: RedisError?
    }

    private let state: FastLock<State>  // taken twice per command by every thread: see FastLock
    private let slots: DispatchSemaphore
    private let presence = Mutex<(connection: RedisConnection, id: Int64, checkedAt: Int64)?>(nil)
    /// The shared connections (`RedisConfiguration.pipelineConnections`), taken in turn.
    private let pipelines: [RedisPipeline]
    private let nextPipeline = Atomic<Int>(0)

    init(configuration: RedisConfiguration, logger: Logger, connect: @escaping @Sendable () throws -> RedisConnection) {
        precondition(configuration.poolSize >= 1, "poolSize must be at least 1")
        self.configuration = configuration
        self.logger = logger
        self.connect = connect
        state = FastLock(State(backoff: configuration.reconnectBackoffMillis))
        slots = DispatchSemaphore(value: configuration.poolSize)
        // At least one place stays for sequences that need a connection of their own (withOwnConnection).
        pipelines = (0..<max(0, min(configuration.pipelineConnections, configuration.poolSize - 1))).map { _ in RedisPipeline() }
    }

    deinit {
        // A semaphore must not die below its start value: give back the places the shared connections hold.
        for pipeline in pipelines where pipeline.detach() != nil { slots.signal() }
    }

    /// Sends `commands` on a shared connection (automatic pipelining), or on
    /// one of the caller's own when `pipelineConnections` is 0. Throws
    /// `RedisNotSent` when no connection could be had.
    func sendShared(
        _ commands: [[[UInt8]]], asking: Bool, durability: RedisDurability?
    ) throws -> (replies: [RedisValue], waited: RedisValue?) {
        if !pipelines.isEmpty {
            let turn = nextPipeline.wrappingAdd(1, ordering: .relaxed).oldValue
            return try pipelines[turn % pipelines.count].send(commands, asking: asking, durability: durability, pool: self)
        }
        return try withOwnConnection(asking: asking) { try $0.pipeline(commands, durability: durability) }
    }

    /// Runs `body` with a connection of the caller's own (`ASKING` before
    /// each command when `asking`). A failed connect throws `RedisNotSent`
    /// (nothing was sent); a connection `body` left broken is dropped.
    func withOwnConnection<T>(asking: Bool = false, _ body: (RedisConnection) throws -> T) throws -> T {
        let connection: RedisConnection
        do {
            connection = try checkOut()
        } catch let error as RedisError where error.code != .poolExhausted {
            throw RedisNotSent(error: error)
        }
        defer {
            connection.asking = false
            checkIn(connection)
        }
        connection.asking = asking
        return try body(connection)
    }

    /// A connection of the caller's own: an idle one, or a new one. Throws
    /// `.poolExhausted` when all stay busy for the command timeout, or the
    /// connect error (nothing was sent). Give it back with `checkIn`.
    func checkOut() throws -> RedisConnection {
        guard slots.wait(timeout: .now() + .milliseconds(configuration.commandTimeoutMillis)) == .success else {
            throw RedisError(.poolExhausted, "all \(configuration.poolSize) Redis connections busy")
        }
        do {
            return try idleOrNew()
        } catch {
            slots.signal()
            throw error
        }
    }

    /// Returns a connection from `checkOut`; a broken one is dropped.
    func checkIn(_ connection: RedisConnection) {
        state.withLock { p in
            if connection.isBroken {
                p.open -= 1
            } else {
                p.idle.append(connection)
            }
        }
        slots.signal()
    }

    /// Drops the idle and shared connections (the server went away, or is no master any more).
    func dropIdle() {
        state.withLock { p in
            p.open -= p.idle.count
            p.idle.removeAll()
        }
        for pipeline in pipelines { pipeline.reset(self) }
    }

    /// Drops every idle connection and the presence connection.
    func close() {
        dropIdle()
        presence.withLock { $0 = nil }
    }

    /// The `CLIENT ID` of a connection kept open, outside the pool and idle,
    /// for as long as the process lives (see `RedisClient.presenceID`).
    func presenceID() throws -> Int64 {
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

    private func idleOrNew() throws -> RedisConnection {
        let now = monotonicMillis()
        let decision = state.withLock { p -> Result<RedisConnection?, RedisError> in
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
                state.withLock {
                    $0.backoff = configuration.reconnectBackoffMillis
                    $0.lastConnectError = nil
                }
                return connection
            } catch {
                let redisError = error as? RedisError ?? RedisError(.connection, "\(error)")
                let wait = state.withLock { p -> Int in
                    p.open -= 1
                    p.lastConnectError = redisError
                    let wait = p.backoff
                    p.nextConnectAllowed = monotonicMillis() + Int64(wait)
                    p.backoff = min(p.backoff * 2, configuration.maxReconnectBackoffMillis)
                    return wait
                }
                logger.warning("redis connect failed", metadata: ["error": "\(redisError)", "retry_in_ms": "\(wait)"])
                throw redisError
            }
        }
    }
}
