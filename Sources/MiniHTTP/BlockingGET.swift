/// A one-shot `GET` over a blocking socket, bounded by a timeout from connect to
/// the last byte read: for health checks and probes on loopback, not for traffic.
public enum BlockingGET {
    /// A probe's answer.
    public struct Answer: Sendable {
        /// The final status code.
        public var status: Int
        /// Empty unless the body was asked for.
        public var body: [UInt8]
    }

    /// `GET path` on `host:port` with `Connection: close`. With `readBody` false it returns
    /// as soon as the final head arrives. Nil on any failure, a body over
    /// `maxBodyBytes`, or when `timeoutMillis` passed.
    public static func fetch(
        host: String, port: Int, path: String, timeoutMillis: Int, userAgent: String, readBody: Bool = true,
        maxBodyBytes: Int = 1 << 20, headers: [(name: String, value: String)] = []
    ) -> Answer? {
        let connection = HTTPClientConnection(
            host: host, port: port, timeoutMillis: timeoutMillis, maxBodyBytes: maxBodyBytes)
        defer { connection.disconnect() }
        let fields = [("User-Agent", userAgent)] + headers + [("Connection", "close")]
        guard let response = try? connection.request("GET", path, headers: fields, headOnly: !readBody) else { return nil }
        return Answer(status: response.status, body: response.body)
    }
}
