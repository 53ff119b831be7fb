#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// A one-shot `GET` over a blocking socket, bounded by a timeout from connect to
/// the last byte read: for health checks and probes on loopback, not for traffic.
public enum BlockingGET {
    public struct Answer: Sendable {
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
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        guard let fd = try? Sockets.connect(host: host, port: port, timeoutMillis: Int32(timeoutMillis)) else { return nil }
        defer { close(fd) }
        Sockets.setSendTimeout(fd, millis: timeoutMillis)
        let hostHeader = host.contains(":") ? "[\(host)]" : host
        let extra = headers.map { "\($0.name): \($0.value)\r\n" }.joined()
        let request =
            "GET \(path) HTTP/1.1\r\nHost: \(hostHeader):\(port)\r\nUser-Agent: \(userAgent)\r\n\(extra)Connection: close\r\n\r\n"
        guard Sockets.writeAll(fd, Array(request.utf8)) else { return nil }
        var parser = HTTPResponseParser()
        var answer: Answer? = nil
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var closed = false
        while true {
            let event = try? closed ? parser.finish() : parser.next()
            switch event {
            case .head(let head)?:
                guard !head.isInterim else { continue }
                answer = Answer(status: head.status, body: [])
                if !readBody { return answer }
                continue
            case .body(let bytes)?:
                answer?.body += bytes
                if (answer?.body.count ?? 0) > maxBodyBytes { return nil }
                continue
            case .end?: return answer
            case nil where closed: return nil
            case nil: break
            }
            let remaining = deadline - monotonicMillis()
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard remaining > 0, poll(&pfd, 1, Int32(remaining)) > 0 else { return nil }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { return nil }
            if n == 0 { closed = true } else { parser.append(buffer[0..<n]) }
        }
    }
}
