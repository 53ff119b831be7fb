import Dispatch
import Synchronization

/// Where a PostgreSQL lock service connects, and its limits.
public struct PostgresConfiguration: Sendable {
    /// `postgresql://user[:password]@host:port/database`.
    public var url: String
    /// Connections at most for acquisitions (each advisory lock held or awaited, and each waiter
    /// of the table lock, keeps one for as long as it holds or waits); the table lock keeps a
    /// quarter more (at least 2) of its own for releases and extensions.
    public var poolSize: Int
    /// Longest wait for a free connection.
    public var poolWaitMillis: Int
    /// Longest wait to connect (libpq counts whole seconds, at least 2).
    public var connectTimeoutSeconds: Int
    /// Longest wait for any statement's answer.
    public var statementTimeoutMillis: Int

    public init(
        url: String, poolSize: Int = 16, poolWaitMillis: Int = 2_000, connectTimeoutSeconds: Int = 2,
        statementTimeoutMillis: Int = 5_000
    ) {
        precondition(poolSize > 0 && poolWaitMillis >= 0 && statementTimeoutMillis > 0, "bad PostgreSQL limits")
        self.url = url
        self.poolSize = poolSize
        self.poolWaitMillis = poolWaitMillis
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.statementTimeoutMillis = statementTimeoutMillis
    }
}

/// A bounded pool of PostgreSQL connections: opened on demand, a broken
/// one dropped when handed back (the next caller connects anew).
final class PostgresPool: Sendable {
    let configuration: PostgresConfiguration
    private let idle = Mutex<[PostgresConnection]>([])
    private let capacity: DispatchSemaphore

    init(configuration: PostgresConfiguration) {
        self.configuration = configuration
        capacity = DispatchSemaphore(value: configuration.poolSize)
    }

    /// A connection of one's own until `checkIn`.
    func checkOut() throws -> PostgresConnection {
        guard capacity.wait(timeout: .now() + .milliseconds(configuration.poolWaitMillis)) == .success else {
            throw PostgresError(.poolExhausted, "no free connection within \(configuration.poolWaitMillis) ms")
        }
        if let ready = idle.withLock({ $0.popLast() }) { return ready }
        do {
            return try PostgresConnection(
                url: configuration.url, connectTimeoutSeconds: configuration.connectTimeoutSeconds,
                applicationName: "session-cluster")
        } catch {
            capacity.signal()
            throw error
        }
    }

    func checkIn(_ connection: PostgresConnection) {
        if !connection.isBroken { idle.withLock { $0.append(connection) } }
        capacity.signal()
    }

    /// Runs `body` with a connection, handed back afterwards.
    func withConnection<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        let connection = try checkOut()
        defer { checkIn(connection) }
        return try body(connection)
    }

    /// One statement on any connection, with the configured timeout. A pooled connection found
    /// broken (it went stale while idle: a restarted server) is dropped and the statement sent
    /// once more on a new one; callers send only statements that are safe to repeat.
    func query(_ sql: String, _ parameters: [String?] = []) throws -> PostgresRows {
        var retried = false
        while true {
            let connection = try checkOut()
            defer { checkIn(connection) }
            let stale = connection.hasBeenUsed
            do {
                return try connection.query(sql, parameters, timeoutMillis: configuration.statementTimeoutMillis)
            } catch let error as PostgresError where error.code == .connection && stale && !retried {
                retried = true
            }
        }
    }
}
