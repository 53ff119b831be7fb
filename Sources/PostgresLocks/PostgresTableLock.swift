import ClusterLocks
import Logging
import Synchronization

/// A lock in a PostgreSQL table: one row per name, taken with one atomic
/// `INSERT … ON CONFLICT DO UPDATE … WHERE expired`.
///
/// - The lease is checked against the database's clock
///   (`clock_timestamp()`), never the callers'.
/// - The fencing token comes from a sequence, drawn under the row's lock
///   when the lock is taken, so tokens of one name strictly increase in the
///   order the lock was granted.
/// - Rows outlive their release (by `fenceRetentionMillis`) so that a late
///   acquisition can never start a name over with an older token; `sweep`
///   deletes older ones (every 256th release runs it).
/// - A waiter `LISTEN`s on a channel of its lock name, and a release
///   `NOTIFY`s it in the same statement: the next holder wakes on the
///   release, not on a poll. A holder that vanishes is waited out until its
///   lease ends, which the waiter knows from the failed attempt.
///
/// The table and its sequence are created on first use (or by `createSchema()`).
public final class PostgresTableLock: LockService {
    public var kind: String { "postgres-table" }
    /// The table's name; its sequence is `<table>_fence`.
    public let table: String
    /// How long a released or expired row is kept before `sweep` may delete it.
    public let fenceRetentionMillis: Int
    /// For acquisitions: a waiter keeps its connection (it `LISTEN`s on it) for its whole wait.
    let pool: PostgresPool
    /// For releases, extensions, sweeps and the schema: never taken up by waiters, so a holder can
    /// always give its lock back however many wait for it.
    let shortPool: PostgresPool
    let logger: Logger
    private let releases = Atomic<Int>(0)

    /// - Parameters:
    ///   - table: a plain lower-case SQL identifier (letters, digits, `_`).
    ///   - fenceRetentionMillis: how long rows outlive their last lease (positive).
    public init(
        configuration: PostgresConfiguration, table: String = "cluster_locks", fenceRetentionMillis: Int = 600_000,
        logger: Logger
    ) {
        precondition(isPlainIdentifier(table), "the table name must be a plain lower-case SQL identifier")
        precondition(fenceRetentionMillis > 0, "fenceRetentionMillis must be positive")
        self.table = table
        self.fenceRetentionMillis = fenceRetentionMillis
        pool = PostgresPool(configuration: configuration)
        var short = configuration
        short.poolSize = max(2, configuration.poolSize / 4)
        shortPool = PostgresPool(configuration: short)
        self.logger = logger
    }

    /// Creates the table and its sequence when missing.
    public func createSchema() throws {
        try unavailableOnFailure { try createTables() }
    }

    private func createTables() throws {
        try createIfMissing {
            _ = try shortPool.query(
                """
                CREATE TABLE IF NOT EXISTS \(table) (
                  name text PRIMARY KEY, holder text NOT NULL, fence bigint NOT NULL, expires_at timestamptz NOT NULL)
                """)
        }
        try createIfMissing { _ = try shortPool.query("CREATE SEQUENCE IF NOT EXISTS \(table)_fence") }
    }

    public func acquire(_ name: String, holder: String, leaseMillis: Int, waitMillis: Int) throws -> LockGrant? {
        try unavailableOnFailure {
            try creatingSchemaWhenMissing(createTables) {
                try pool.withConnection { connection in
                    try acquire(name, holder: holder, leaseMillis: leaseMillis, waitMillis: waitMillis, on: connection)
                }
            }
        }
    }

    private func acquire(
        _ name: String, holder: String, leaseMillis: Int, waitMillis: Int, on connection: PostgresConnection
    ) throws -> LockGrant? {
        let deadline = ContinuousClock.now + .milliseconds(waitMillis)
        let channel = notificationChannel(name)
        let timeout = pool.configuration.statementTimeoutMillis
        var listening = false
        defer { if listening { _ = try? connection.query("UNLISTEN \(channel)", timeoutMillis: timeout) } }
        while true {
            let sent = ContinuousClock.now
            let rows = try connection.query(acquireSQL, [name, holder, String(leaseMillis)], timeoutMillis: timeout).rows
            if let fence = rows.first?[0].flatMap({ Int64($0) }) {
                return LockGrant(fencingToken: fence, expiresAt: sent + .milliseconds(leaseMillis))
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return nil }
            if !listening {
                // Listen, then try again at once: a release between the first try and the LISTEN is not missed.
                _ = try connection.query("LISTEN \(channel)", timeoutMillis: timeout)
                listening = true
                continue
            }
            // The holder's lease left (unknown when its row was written after this statement's snapshot).
            let holderLeft = rows.first?[1].flatMap { Int($0) }.map { $0 + 1 } ?? 50
            let wait = min(Self.millis(left), holderLeft)
            _ = try connection.awaitNotifications(timeoutMillis: wait)
        }
    }

    public func release(_ name: String, holder: String) throws -> Bool {
        let rows = try unavailableOnFailure {
            try shortPool.query(releaseSQL, [name, holder, notificationChannel(name)]).rows
        }
        if releases.add(1, ordering: .relaxed).newValue % 256 == 0 {
            do { try sweep() } catch { logger.warning("lock table sweep failed", metadata: ["error": "\(error)"]) }
        }
        return rows.first?[0] == "t"
    }

    public func extend(_ name: String, holder: String, leaseMillis: Int) throws -> Bool {
        try unavailableOnFailure {
            try shortPool.query(extendSQL, [name, holder, String(leaseMillis)]).affected == 1
        }
    }

    /// Deletes up to 1,000 rows whose lease ended longer than `fenceRetentionMillis` ago; returns how many.
    @discardableResult
    public func sweep() throws -> Int {
        try unavailableOnFailure {
            try shortPool.query(
                """
                DELETE FROM \(table) WHERE name IN (
                  SELECT name FROM \(table) WHERE expires_at < clock_timestamp() - $1::bigint * interval '1 millisecond'
                  LIMIT 1000)
                """, [String(fenceRetentionMillis)]
            ).affected
        }
    }

    /// Takes the row when it is free or its lease ended; else returns the holder's milliseconds left
    /// (read from the statement's snapshot: the row as it was before this statement).
    private var acquireSQL: String {
        """
        WITH taken AS (
          INSERT INTO \(table) AS l (name, holder, fence, expires_at)
          VALUES ($1, $2, nextval('\(table)_fence'), clock_timestamp() + $3::bigint * interval '1 millisecond')
          ON CONFLICT (name) DO UPDATE
            SET holder = excluded.holder, fence = nextval('\(table)_fence'),
                expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
            WHERE l.expires_at <= clock_timestamp()
          RETURNING fence)
        SELECT fence, NULL::bigint FROM taken
        UNION ALL
        SELECT NULL, greatest(0, ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000))::bigint
          FROM \(table) WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM taken)
        """
    }

    /// Frees the row if `holder` owns it (kept, with its fence, until swept) and notifies waiters;
    /// returns whether its lease was still running.
    private var releaseSQL: String {
        """
        WITH old AS (SELECT expires_at > clock_timestamp() AS in_time FROM \(table) WHERE name = $1 AND holder = $2),
        freed AS (
          UPDATE \(table) SET holder = '', expires_at = clock_timestamp() WHERE name = $1 AND holder = $2 RETURNING 1)
        SELECT old.in_time, pg_notify($3, '') FROM old, freed
        """
    }

    private var extendSQL: String {
        """
        UPDATE \(table) SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
        WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()
        """
    }

    /// One channel per lock name (a hash: channel names are identifiers of at most 63 bytes).
    private func notificationChannel(_ name: String) -> String { "lock_" + lockNameHash(table + ":" + name).hex }

    private static func millis(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000) + 1
    }
}
