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
}

/// One HTTP/1.1 request on a new loopback connection (`Connection: close`),
/// blocking: a client that shares nothing with the server under test (run
/// it with `onThread` to have many at once).
public func rawHTTP(
    port: Int, _ method: String, _ path: String, headers: [String: String] = [:], body: String = "",
    timeoutSeconds: Int = 20
) throws -> RawHTTPResponse {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestKitError("socket failed: \(errno)") }
    defer { close(fd) }
    var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw TestKitError("connect to port \(port) failed: \(errno)") }
    var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
    for (name, value) in headers.sorted(by: { $0.key < $1.key }) { text += "\(name): \(value)\r\n" }
    text += "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    let bytes = Array(text.utf8)
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { throw TestKitError("send failed: \(errno)") }
        sent += n
    }
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
    let lines = response[..<end.lowerBound].components(separatedBy: "\r\n")
    let statusParts = lines[0].split(separator: " ")
    guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw TestKitError("bad status line \(lines[0])") }
    let fields = lines.dropFirst().compactMap { line -> (name: String, value: String)? in
        guard let colon = line.firstIndex(of: ":") else { return nil }
        return (String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
    }
    return RawHTTPResponse(status: status, headers: fields, body: String(response[end.upperBound...]))
}
