/// A PostgreSQL call failed.
public struct PostgresError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The server could not be reached, or the connection broke.
        case connection
        /// No answer within the call's timeout (the connection is closed: its state is unknown).
        case timeout
        /// The server answered with an error (`sqlState` says which).
        case server
        /// No connection came free in time.
        case poolExhausted
    }

    public var code: Code
    public var message: String
    /// The server's SQLSTATE for `.server` errors ("55P03": lock not available).
    public var sqlState: String?

    public init(_ code: Code, _ message: String, sqlState: String? = nil) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
    }

    public var description: String {
        "postgres \(code.rawValue)\(sqlState.map { " \($0)" } ?? ""): \(message)"
    }
}
