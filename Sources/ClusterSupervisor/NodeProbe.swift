#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP

/// Small blocking HTTP/1.1 GETs the supervisor sends to its nodes on loopback
/// (readiness and metrics), each bounded by a timeout.
enum NodeProbe {
    struct Answer {
        var status: Int
        var body: [UInt8]
    }

    /// `GET path` on `host:port`; nil on any failure or after `timeoutMillis`.
    static func get(host: String, port: Int, path: String, timeoutMillis: Int, maxBodyBytes: Int = 1 << 20) -> Answer? {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        guard let fd = try? Sockets.connect(host: host, port: port, timeoutMillis: Int32(timeoutMillis)) else { return nil }
        defer { close(fd) }
        Sockets.setSendTimeout(fd, millis: timeoutMillis)
        let request = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUser-Agent: session-cluster-supervisor\r\nConnection: close\r\n\r\n"
        guard Sockets.writeAll(fd, Array(request.utf8)) else { return nil }
        var parser = HTTPResponseParser()
        var status = 0
        var body: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var closed = false
        while true {
            let event = try? closed ? parser.finish() : parser.next()
            switch event {
            case .head(let head)?:
                if !head.isInterim { status = head.status }
                continue
            case .body(let bytes)?:
                body += bytes
                if body.count > maxBodyBytes { return nil }
                continue
            case .end?: return status == 0 ? nil : Answer(status: status, body: body)
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

    /// The value of the first sample of `metric` in Prometheus text, if any.
    static func sample(_ metric: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(metric) {
            let rest = line.dropFirst(metric.count)
            guard rest.first == "{" || rest.first == " " else { continue }
            if let value = line.split(separator: " ").last, let number = Double(value) { return Int(number) }
        }
        return nil
    }
}
