/// Why a request could not be parsed, with the status code to answer it with.
///
/// The connection must be closed after answering: the parser cannot find the
/// start of the next request once framing is in doubt.
public struct HTTPParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The status to answer with: 400, 413, 431, 501 or 505.
    public var status: Int
    /// A short, human-readable reason (safe to show to the client).
    public var reason: String

    public init(status: Int, reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { "\(status) \(reasonPhrase(status)): \(reason)" }

    static func bad(_ reason: String) -> HTTPParseError { HTTPParseError(status: 400, reason: reason) }
    static let headTooLarge = HTTPParseError(status: 431, reason: "request line and headers exceed the limit")
    static let bodyTooLarge = HTTPParseError(status: 413, reason: "request body exceeds the limit")
}

/// Size limits applied while parsing.
public struct HTTPParserLimits: Sendable, Equatable {
    /// Request line plus headers, in bytes (431 when exceeded).
    public var maxHeadBytes: Int
    /// Number of header fields (431 when exceeded).
    public var maxHeaderCount: Int
    /// Request body, in bytes, after de-chunking (413 when exceeded).
    public var maxBodyBytes: Int

    public init(maxHeadBytes: Int = 16 * 1024, maxHeaderCount: Int = 128, maxBodyBytes: Int = 1 << 20) {
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaderCount = maxHeaderCount
        self.maxBodyBytes = maxBodyBytes
    }
}
