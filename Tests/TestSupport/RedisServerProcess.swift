import Foundation
import SystemSupport

/// A private redis-server on a loopback port, for tests that stop and start Redis.
public final class RedisServerProcess: @unchecked Sendable {  // used by one test at a time
    public let port: Int
    public let directory: URL
    private var child: ChildProcess?

    /// Whether redis-server is installed (scripts/test.sh installs it).
    public static var isInstalled: Bool { executable != nil }

    static var executable: URL? {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let url = URL(fileURLWithPath: dir).appendingPathComponent("redis-server")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }

    /// Starts redis-server on `port` (a free one when nil) and waits until it answers.
    public init(port: Int? = nil) throws {
        self.port = try port ?? Sockets.freeLoopbackPort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try start()
    }

    public var url: String { "redis://127.0.0.1:\(port)/0" }

    /// Starts it again (after `kill()`), on the same port, empty.
    public func start() throws {
        guard let executable = Self.executable else {
            throw ChildProcessError(message: "redis-server is not installed (apt-get install redis-server)")
        }
        let process = try ChildProcess(
            executable,
            ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory.path])
        child = process
        guard waitUntil(timeout: 10, { Self.answersPing(port: port) }) else {
            process.stop(signal: SIGKILL)
            throw ChildProcessError(message: "redis-server on port \(port) did not start: \(process.output)")
        }
    }

    /// SIGKILL, as a crash.
    public func kill() {
        child?.stop(signal: SIGKILL, timeout: 5)
        child = nil
    }

    public var pid: Int32? { child?.pid }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    /// PING over a raw socket.
    static func answersPing(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var tv = timeval(tv_sec: 0, tv_usec: 300_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { return false }
        let ping = Array("PING\r\n".utf8)
        guard send(fd, ping, ping.count, Int32(MSG_NOSIGNAL)) == ping.count else { return false }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 && String(decoding: buffer[0..<n], as: UTF8.self).hasPrefix("+PONG")
    }
}
