import CLibPQ
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// The rows of a query, as text (nil for SQL NULL).
public struct PostgresRows: Sendable, Equatable {
    public var rows: [[String?]]
    /// Rows inserted, updated or deleted, for commands that report it.
    public var affected: Int
}

/// One blocking libpq connection, used by one thread at a time (a pool
/// hands it out). Every call has a deadline, enforced here with libpq's
/// asynchronous API and `poll`: a server that stops answering (stopped,
/// partitioned) costs a timeout, never a hung thread.
final class PostgresConnection: @unchecked Sendable {  // one thread at a time: the pool hands it out
    private let conn: OpaquePointer
    private(set) var isBroken = false
    /// Whether a statement ran on it before: a pooled connection may have gone stale (the server
    /// restarted) while it waited in the pool.
    private(set) var hasBeenUsed = false

    /// Connects to `url` (`postgresql://user@host:port/db`), waiting up to `connectTimeoutSeconds` (≥ 2, libpq's floor).
    init(url: String, connectTimeoutSeconds: Int, applicationName: String) throws {
        let keywords = ["dbname", "connect_timeout", "application_name"]
        let values = [url, String(max(2, connectTimeoutSeconds)), applicationName]
        let made: OpaquePointer? = withCStrings(keywords) { k in
            withCStrings(values) { v in PQconnectdbParams(k, v, 1) }
        }
        guard let made else { throw PostgresError(.connection, "out of memory connecting to PostgreSQL") }
        guard PQstatus(made) == CONNECTION_OK else {
            let message = Self.errorText(PQerrorMessage(made))
            PQfinish(made)
            throw PostgresError(.connection, "connect to \(Self.redacted(url)): \(message)")
        }
        // The server's notices (warnings on a crash, …) would go to stderr: the errors that matter come as results.
        PQsetNoticeProcessor(made, { _, _ in }, nil)
        conn = made
    }

    deinit { PQfinish(conn) }

    /// Runs one statement with text parameters (`$1`, `$2`, …), waiting up to `timeoutMillis`.
    /// A connection error or a timeout marks the connection broken.
    func query(_ sql: String, _ parameters: [String?] = [], timeoutMillis: Int) throws -> PostgresRows {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        hasBeenUsed = true
        let sent: Int32 = withOptionalCStrings(parameters) { values in
            PQsendQueryParams(conn, sql, Int32(parameters.count), nil, values, nil, nil, 0)
        }
        guard sent == 1 else { throw broken(.connection, "send: \(Self.errorText(PQerrorMessage(conn)))") }
        var rows = PostgresRows(rows: [], affected: 0)
        var failure: PostgresError?
        while true {
            try awaitResult(until: deadline)
            guard let result = PQgetResult(conn) else { break }
            defer { PQclear(result) }
            switch PQresultStatus(result) {
            case PGRES_TUPLES_OK, PGRES_COMMAND_OK:
                rows = Self.rows(of: result)
            default:
                let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
                failure = PostgresError(.server, Self.errorText(PQresultErrorMessage(result)), sqlState: state)
            }
        }
        if PQstatus(conn) != CONNECTION_OK { throw broken(.connection, Self.errorText(PQerrorMessage(conn))) }
        if let failure { throw failure }
        return rows
    }

    /// Waits up to `timeoutMillis` for a notification on a channel this connection listens on;
    /// returns the channels notified (empty on timeout).
    func awaitNotifications(timeoutMillis: Int) throws -> [String] {
        var channels = takeNotifications()
        if !channels.isEmpty { return channels }
        var poller = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(max(0, timeoutMillis))) > 0 else { return [] }
        guard PQconsumeInput(conn) == 1 else { throw broken(.connection, Self.errorText(PQerrorMessage(conn))) }
        channels = takeNotifications()
        return channels
    }

    private func takeNotifications() -> [String] {
        var channels: [String] = []
        while let note = PQnotifies(conn) {
            channels.append(String(cString: note.pointee.relname))
            PQfreemem(note)
        }
        return channels
    }

    /// Reads until a result can be taken without blocking, or throws at `deadline`.
    private func awaitResult(until deadline: Int64) throws {
        while PQisBusy(conn) == 1 {
            let left = deadline - monotonicMillis()
            guard left > 0 else { throw broken(.timeout, "no answer within the deadline") }
            var poller = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(min(left, 60_000)))
            if ready < 0 && errno != EINTR { throw broken(.connection, "poll: errno \(errno)") }
            if ready > 0, PQconsumeInput(conn) != 1 {
                throw broken(.connection, Self.errorText(PQerrorMessage(conn)))
            }
        }
    }

    /// Marks the connection unusable: the pool closes it instead of handing it out again (its
    /// session, and any advisory lock it holds, end with it).
    func markBroken() { isBroken = true }

    private func broken(_ code: PostgresError.Code, _ message: String) -> PostgresError {
        isBroken = true
        return PostgresError(code, message)
    }

    private static func rows(of result: OpaquePointer) -> PostgresRows {
        let count = Int(PQntuples(result))
        let fields = Int(PQnfields(result))
        var rows: [[String?]] = []
        rows.reserveCapacity(count)
        for r in 0..<count {
            rows.append(
                (0..<fields).map { f in
                    PQgetisnull(result, Int32(r), Int32(f)) == 1
                        ? nil : String(cString: PQgetvalue(result, Int32(r), Int32(f)))
                })
        }
        let affected = PQcmdTuples(result).map { Int(String(cString: $0)) ?? 0 } ?? 0
        return PostgresRows(rows: rows, affected: affected)
    }

    private static func errorText(_ text: UnsafeMutablePointer<CChar>?) -> String {
        guard let text else { return "unknown error" }
        return String(cString: text).trimmingSuffix(while: { $0 == "\n" || $0 == " " })
    }

    /// The URL without its password, for messages.
    static func redacted(_ url: String) -> String {
        guard let at = url.lastIndex(of: "@"), let colon = url[..<at].lastIndex(of: ":"),
            !url[url.index(after: colon)...].hasPrefix("//")
        else { return url }
        return String(url[...colon]) + "***" + String(url[at...])
    }
}

extension String {
    fileprivate func trimmingSuffix(while drop: (Character) -> Bool) -> String {
        var end = endIndex
        while end > startIndex, drop(self[index(before: end)]) { end = index(before: end) }
        return String(self[..<end])
    }
}

/// Calls `body` with `strings` as a C array of C strings.
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    withOptionalCStrings(strings) { body($0!) }
}

/// Calls `body` with `strings` as a C array of C strings, NULL for nil (nil for an empty list).
private func withOptionalCStrings<R>(_ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> R) -> R {
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { $0.map { strdup($0)! } }
    defer { copies.forEach { free($0) } }
    let pointers = copies.map { UnsafePointer($0) } + [nil]
    return pointers.withUnsafeBufferPointer { body($0.baseAddress) }
}
