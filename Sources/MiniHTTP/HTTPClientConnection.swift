#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// One blocking HTTP/1.1 client connection to `host:port`: opened on first
/// use and again after any failure or a response that closes it; each
/// exchange bounded by `timeoutMillis` from the connect (or the send, on an
/// open connection) to the last byte read. Responses are read with
/// `HTTPResponseParser` (any framing). For probes, benchmarks and tests on
/// loopback, not for traffic. One thread at a time; the socket is closed by
/// `disconnect()` or when the connection is freed.
public final class HTTPClientConnection {
    /// A response: its final head, and its body (empty when only the head was asked for).
    public struct Response: Sendable {
        /// The final (non-1xx) head.
        public var head: HTTPResponseHead
        /// The body, whatever its framing was.
        public var body: [UInt8]
        /// The head's status code.
        public var status: Int { head.status }
    }

    /// The server's numeric address.
    public let host: String
    /// The server's port.
    public let port: Int
    /// The bound of one exchange, in milliseconds.
    public let timeoutMillis: Int
    /// Responses with a larger body fail (and close the connection).
    public let maxBodyBytes: Int
    private var fd: Int32 = -1
    private var parser = HTTPResponseParser()
    private var scratch = [UInt8](repeating: 0, count: 16 * 1024)

    public init(host: String, port: Int, timeoutMillis: Int = 5_000, maxBodyBytes: Int = 1 << 20) {
        self.host = host
        self.port = port
        self.timeoutMillis = timeoutMillis
        self.maxBodyBytes = maxBodyBytes
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// Whether a connection is open now.
    public var isConnected: Bool { fd >= 0 }

    /// Closes the connection (the next request opens a new one).
    public func disconnect() {
        if fd >= 0 { close(fd) }
        fd = -1
        parser.reset()
    }

    /// The `Host` header value for this connection's address.
    public var hostHeader: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    /// Sends `method target` with `headers` (plus `Host` and `Content-Length`) and `body`, and
    /// reads the final response (with `headOnly`, only its head: the connection is then closed).
    /// On any failure the connection is closed and the error thrown.
    public func request(
        _ method: String, _ target: String, headers: [(name: String, value: String)] = [], body: [UInt8] = [],
        headOnly: Bool = false
    ) throws(HTTPClientError) -> Response {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: \(hostHeader)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if !body.isEmpty || method == "POST" || method == "PUT" { head += "Content-Length: \(body.count)\r\n" }
        return try send(Array((head + "\r\n").utf8) + body, toHEAD: method == "HEAD", headOnly: headOnly)
    }

    /// Sends a whole serialized request and reads the final response (see `request`).
    public func send(_ request: [UInt8], toHEAD: Bool = false, headOnly: Bool = false) throws(HTTPClientError) -> Response {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        do throws(HTTPClientError) {
            if fd < 0 { try connect() }
            guard Sockets.writeAll(fd, request) else { throw HTTPClientError("send failed: errno \(errno)") }
            parser.expectResponse(toHEAD: toHEAD)
            let response = try readResponse(deadline: deadline, headOnly: headOnly)
            if headOnly || !response.head.keepAlive { disconnect() }
            return response
        } catch {
            disconnect()
            throw error
        }
    }

    private func connect() throws(HTTPClientError) {
        do {
            fd = try Sockets.connect(host: host, port: port, timeoutMillis: Int32(timeoutMillis))
        } catch {
            throw HTTPClientError("cannot connect to \(hostHeader): \(error)")
        }
        Sockets.setSendTimeout(fd, millis: timeoutMillis)
        parser.reset()
    }

    private func readResponse(deadline: Int64, headOnly: Bool) throws(HTTPClientError) -> Response {
        var head: HTTPResponseHead?
        var body: [UInt8] = []
        var closed = false
        while true {
            let event: HTTPResponseParser.Event?
            do { event = try closed ? parser.finish() : parser.next() } catch {
                throw HTTPClientError("bad response: \(error)")
            }
            switch event {
            case .head(let h)?:
                guard !h.isInterim else { continue }
                if headOnly { return Response(head: h, body: []) }
                head = h
                continue
            case .body(let bytes)?:
                body += bytes
                guard body.count <= maxBodyBytes else { throw HTTPClientError("response body over \(maxBodyBytes) bytes") }
                continue
            case .end?:
                guard let head else { continue }  // the end of an interim response
                return Response(head: head, body: body)
            case nil where closed:
                throw HTTPClientError("connection closed before the response ended")
            case nil:
                break
            }
            let remaining = deadline - monotonicMillis()
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard remaining > 0, poll(&pfd, 1, Int32(remaining)) > 0 else {
                throw HTTPClientError("no response within \(timeoutMillis) ms")
            }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw HTTPClientError("recv failed: errno \(errno)")
            }
            if n == 0 { closed = true } else { parser.append(scratch[0..<n]) }
        }
    }
}

/// A failed client exchange, with what went wrong.
public struct HTTPClientError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
