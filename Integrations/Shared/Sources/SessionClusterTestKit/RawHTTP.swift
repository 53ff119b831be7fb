import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// An answer read by `rawHTTP`.
public struct RawHTTPResponse: Sendable {
    /// The status code.
    public var status: Int
    /// The header fields, in order.
    public var headers: [(name: String, value: String)]
    /// The body as text.
    public var body: String

    /// The first value of a header (case-insensitive name).
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    /// The values of every `Set-Cookie` header.
    public var setCookies: [String] { headers.filter { $0.name.lowercased() == "set-cookie" }.map(\.value) }

    /// The values of every header `name` (case-insensitive), in order.
    public func values(_ name: String) -> [String] {
        headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    /// Whether any `name` header lists `token` (comma-separated, case-insensitive),
    /// e.g. `close` in `Connection`.
    public func lists(_ token: String, in name: String) -> Bool {
        values(name).contains { value in
            value.split(separator: ",").contains {
                $0.trimmingCharacters(in: .whitespaces).lowercased() == token.lowercased()
            }
        }
    }
}

/// One HTTP/1.1 request on a new loopback connection (`Connection: close`),
/// blocking: a client that shares nothing with the server under test (run
/// it with `onThread` to have many at once).
public func rawHTTP(
    port: Int, _ method: String, _ path: String, headers: [String: String] = [:], body: String = "",
    timeoutSeconds: Int = 20
) throws -> RawHTTPResponse {
    let fd = try connectLoopback(port: port, timeoutSeconds: timeoutSeconds)
    defer { close(fd) }
    try sendAll(fd, requestText(method, path, port: port, headers: headers, body: body, close: true))
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16_384)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n == 0 { break }
        guard n > 0 else { throw TestKitError("recv failed or timed out: \(errno)") }
        received.append(contentsOf: buffer[0..<n])
    }
    let response = String(decoding: received, as: UTF8.self)
    guard let end = response.range(of: "\r\n\r\n") else { throw TestKitError("no response head: \(response)") }
    let (status, fields) = try parseHead(String(response[..<end.lowerBound]))
    return RawHTTPResponse(status: status, headers: fields, body: String(response[end.upperBound...]))
}

/// One kept-alive HTTP/1.1 connection to a loopback port, blocking: each
/// request goes without `Connection: close` and its answer is read by its
/// `Content-Length`, so the connection stays open for the next one (as a
/// balancer's pooled connection does). Not for concurrent use.
public final class RawHTTPConnection {
    private var fd: Int32
    private var pending: [UInt8] = []
    private let port: Int

    /// Connects (`timeoutSeconds` bounds every read).
    public init(port: Int, timeoutSeconds: Int = 20) throws {
        self.port = port
        fd = try connectLoopback(port: port, timeoutSeconds: timeoutSeconds)
    }

    /// Sends one request and reads its answer (which must have a `Content-Length`).
    public func request(
        _ method: String, _ path: String, headers: [String: String] = [:], body: String = ""
    ) throws -> RawHTTPResponse {
        guard fd >= 0 else { throw TestKitError("connection closed") }
        try sendAll(fd, requestText(method, path, port: port, headers: headers, body: body, close: false))
        var headEnd: Int? = nil
        while headEnd == nil {
            headEnd = pending.indices.dropLast(3).first {
                pending[$0] == 13 && pending[$0 + 1] == 10 && pending[$0 + 2] == 13 && pending[$0 + 3] == 10
            }
            if headEnd == nil { try receiveMore() }
        }
        let head = String(decoding: pending[..<headEnd!], as: UTF8.self)
        let (status, fields) = try parseHead(head)
        pending.removeFirst(headEnd! + 4)
        guard let lengthText = fields.first(where: { $0.name.lowercased() == "content-length" })?.value,
            let length = Int(lengthText)
        else { throw TestKitError("no Content-Length in the answer: \(head)") }
        while pending.count < length { try receiveMore() }
        let body = String(decoding: pending[..<length], as: UTF8.self)
        pending.removeFirst(length)
        return RawHTTPResponse(status: status, headers: fields, body: body)
    }

    /// Waits up to `timeoutSeconds` for the server to close the connection: true
    /// once it did (end of stream or reset), false while it is still open.
    public func closedByPeer(within timeoutSeconds: Double) -> Bool {
        guard fd >= 0 else { return true }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let millis = max(0, Int32(deadline.timeIntervalSinceNow * 1000))
            let ready = poll(&pfd, 1, millis)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return false }
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n == 0 { return true }
            if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR }
            pending.append(contentsOf: buffer[0..<n])  // unexpected bytes: kept, still open
        }
    }

    /// Closes the connection (again: nothing).
    public func close() {
        if fd >= 0 { _ = closeDescriptor(fd) }
        fd = -1
    }

    deinit { close() }

    private func receiveMore() throws {
        var buffer = [UInt8](repeating: 0, count: 16_384)
        let n = recv(fd, &buffer, buffer.count, 0)
        if n == 0 { throw TestKitError("the server closed the connection before a whole answer") }
        guard n > 0 else { throw TestKitError("recv failed or timed out: \(errno)") }
        pending.append(contentsOf: buffer[0..<n])
    }
}

/// `close(2)` (`RawHTTPConnection.close()` hides the function's name there).
private func closeDescriptor(_ fd: Int32) -> Int32 { close(fd) }

/// A TCP connection to 127.0.0.1:`port` whose reads time out after `timeoutSeconds`.
private func connectLoopback(port: Int, timeoutSeconds: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestKitError("socket failed: \(errno)") }
    var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let error = errno
        close(fd)
        throw TestKitError("connect to port \(port) failed: \(error)")
    }
    return fd
}

/// A request's bytes, with `Connection: close` when `close`.
private func requestText(
    _ method: String, _ path: String, port: Int, headers: [String: String], body: String, close: Bool
) -> [UInt8] {
    var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n"
    if close { text += "Connection: close\r\n" }
    for (name, value) in headers.sorted(by: { $0.key < $1.key }) { text += "\(name): \(value)\r\n" }
    text += "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    return Array(text.utf8)
}

private func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { throw TestKitError("send failed: \(errno)") }
        sent += n
    }
}

/// The status and header fields of a response head (without its blank line).
private func parseHead(_ head: String) throws -> (status: Int, fields: [(name: String, value: String)]) {
    let lines = head.components(separatedBy: "\r\n")
    let statusParts = lines[0].split(separator: " ")
    guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw TestKitError("bad status line \(lines[0])") }
    let fields = lines.dropFirst().compactMap { line -> (name: String, value: String)? in
        guard let colon = line.firstIndex(of: ":") else { return nil }
        return (String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
    }
    return (status, fields)
}
