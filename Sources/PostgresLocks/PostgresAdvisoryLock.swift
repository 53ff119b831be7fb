import ClusterLocks
import Logging
import Synchronization

/// A lock on PostgreSQL's advisory locks (`pg_advisory_lock`): held by a
/// database session, so by the connection that took it.
///
/// Its guarantee differs from the table lock's:
/// - The lock lives as long as its connection. A holder that dies (its
///   socket closes) frees it at once; a restarted or failed-over server
///   frees every lock, and their holders find them `lost` at their next
///   extension or release.
/// - The lease is the session's `idle_session_timeout` (PostgreSQL 14+):
///   a holder that stays silent longer (stopped, partitioned) has its
///   session ended by the server, which frees the lock. Extending is any
///   statement on the connection. The database's clock decides.
/// - Waiting is the server's own (`lock_timeout`): a waiter wakes when the
///   lock is freed, with no polling.
/// - One connection per lock held: `poolSize` bounds the locks held at once.
/// - Names are hashed to the 64-bit key space of advisory locks: two names
///   with the same hash are one lock (a false conflict, never a double grant).
///
/// Fencing tokens come from a sequence, drawn once the lock is held; it is
/// created on first use (or by `createSchema()`).
public final class PostgresAdvisoryLock: LockService {
    public var kind: String { "postgres-advisory" }
    /// The sequence fencing tokens come from.
    public let sequence: String
    let pool: PostgresPool
    let logger: Logger

    /// A held lock's connection; its mutex keeps an extension and the release from crossing, and
    /// the release empties it (an extension that waited for it then finds nothing to extend).
    private final class Holding: Sendable {
        let key: String
        let connection: Mutex<PostgresConnection?>
        init(key: String, connection: PostgresConnection) {
            self.key = key
            self.connection = Mutex(connection)
        }
    }

    private let held = Mutex<[String: Holding]>([:])

    public init(configuration: PostgresConfiguration, sequence: String = "cluster_lock_fence", logger: Logger) {
        precondition(isPlainIdentifier(sequence), "the sequence name must be a plain lower-case SQL identifier")
        self.sequence = sequence
        pool = PostgresPool(configuration: configuration)
        self.logger = logger
    }

    /// Creates the sequence when missing.
    public func createSchema() throws {
        try unavailableOnFailure { try pool.withConnection(createSequence) }
    }

    private func createSequence(on connection: PostgresConnection) throws {
        try createIfMissing {
            _ = try connection.query(
                "CREATE SEQUENCE IF NOT EXISTS \(sequence)", timeoutMillis: pool.configuration.statementTimeoutMillis)
        }
    }

    public func acquire(_ name: String, holder: String, leaseMillis: Int, waitMillis: Int) throws -> LockGrant? {
        let key = String(Int64(bitPattern: lockNameHash(name)))
        let connection = try unavailableOnFailure { try pool.checkOut() }
        var kept = false
        defer { if !kept { pool.checkIn(connection) } }
        let timeout = pool.configuration.statementTimeoutMillis
        return try unavailableOnFailure {
            do {
                let sent = ContinuousClock.now
                if waitMillis == 0 {
                    let taken = try connection.query("SELECT pg_try_advisory_lock($1::bigint)", [key], timeoutMillis: timeout)
                    guard taken.rows.first?[0] == "t" else { return nil }
                } else {
                    do {
                        _ = try connection.query(
                            "SELECT set_config('lock_timeout', $2, false), pg_advisory_lock($1::bigint)",
                            [key, String(waitMillis)], timeoutMillis: waitMillis + timeout)
                    } catch let error as PostgresError where error.sqlState == "55P03" {
                        return nil  // lock_not_available: the wait ran out
                    }
                }
                let fence = try creatingSchemaWhenMissing({ try createSequence(on: connection) }) {
                    try connection.query(
                        """
                        SELECT nextval('\(sequence)'), set_config('lock_timeout', '0', false),
                          set_config('idle_session_timeout', $1, false)
                        """, [String(leaseMillis)], timeoutMillis: timeout)
                }
                guard let token = fence.rows.first?[0].flatMap({ Int64($0) }) else {
                    throw PostgresError(.server, "nextval returned no token")
                }
                held.withLock { $0[holder] = Holding(key: key, connection: connection) }
                kept = true
                return LockGrant(fencingToken: token, expiresAt: sent + .milliseconds(leaseMillis))
            } catch {
                // The lock may be held by now (a failure after it was taken): the connection is closed
                // rather than pooled, which ends its session and frees the lock.
                connection.markBroken()
                throw error
            }
        }
    }

    public func release(_ name: String, holder: String) throws -> Bool {
        guard let holding = held.withLock({ $0.removeValue(forKey: holder) }) else { return false }
        return holding.connection.withLock { held in
            guard let connection = held else { return false }
            held = nil
            defer { pool.checkIn(connection) }
            do {
                let rows = try connection.query(
                    "SELECT pg_advisory_unlock($1::bigint), set_config('idle_session_timeout', '0', false)",
                    [holding.key], timeoutMillis: pool.configuration.statementTimeoutMillis)
                return rows.rows.first?[0] == "t"
            } catch {
                // The session is gone (ended by its idle timeout, or the server restarted): so is the
                // lock. Should it not be, closing the connection ends it.
                connection.markBroken()
                logger.debug("advisory lock's session ended before its release", metadata: ["error": "\(error)"])
                return false
            }
        }
    }

    public func extend(_ name: String, holder: String, leaseMillis: Int) throws -> Bool {
        guard let holding = held.withLock({ $0[holder] }) else { return false }
        return holding.connection.withLock { held in
            guard let connection = held, !connection.isBroken else { return false }
            do {
                _ = try connection.query(
                    "SELECT set_config('idle_session_timeout', $1, false)", [String(leaseMillis)],
                    timeoutMillis: pool.configuration.statementTimeoutMillis)
                return true
            } catch {
                logger.debug("advisory lock's session ended before its extension", metadata: ["error": "\(error)"])
                return false
            }
        }
    }
}
