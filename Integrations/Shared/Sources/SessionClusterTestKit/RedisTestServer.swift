import Foundation
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// The Redis the integration tests use: `$REDIS_URL` when set (the root
/// test script exports it), otherwise a private redis-server on a free
/// loopback port, started here (posix_spawn) and stopped by its PID.
public final class RedisTestServer: Sendable {
    /// Where it is: `redis://127.0.0.1:PORT/0`.
    public let url: String
    /// The PID of the redis-server this started, if it started one.
    public let pid: Int32?
    private let directory: String?
    private let stopped = Mutex(false)

    /// The Redis of `$REDIS_URL`, or a new private one.
    public static func start() throws -> RedisTestServer {
        if let url = ProcessInfo.processInfo.environment["REDIS_URL"], !url.isEmpty {
            return RedisTestServer(url: url)
        }
        return try RedisTestServer()
    }

    private init(url: String) {
        self.url = url
        pid = nil
        directory = nil
    }

    /// Starts redis-server on a free loopback port and waits until it answers PING.
    public init() throws {
        guard let executable = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]
            .first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            throw TestKitError("redis-server is not installed (apt-get install redis-server), and REDIS_URL is not set")
        }
        var lastError = TestKitError("redis-server did not start")
        for _ in 0..<3 {  // a free port may be taken before redis-server binds it
            let port = try Sockets.freeLoopbackPort()
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let pid = try spawn(
                executable,
                ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory])
            if waitUntil(timeout: 10, { redisAnswersPing(port: port) }) {
                self.pid = pid
                self.directory = directory
                url = "redis://127.0.0.1:\(port)/0"
                return
            }
            terminate(pid, timeout: 0)
            try? FileManager.default.removeItem(atPath: directory)
            lastError = TestKitError("redis-server on port \(port) did not answer PING")
        }
        throw lastError
    }

    /// Stops the redis-server this started (SIGTERM, SIGKILL after 5 s; reaped)
    /// and removes its directory. A no-op for `$REDIS_URL`'s, and the second time.
    public func stop() {
        let first = stopped.withLock { wasStopped in
            defer { wasStopped = true }
            return !wasStopped
        }
        guard let pid, first else { return }
        terminate(pid, timeout: 5)
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }

    deinit { stop() }
}

/// Starts `executable` with `arguments`, its output (stdout and stderr) to
/// `outputPath` (created or truncated) or /dev/null; returns its PID.
func spawn(_ executable: String, _ arguments: [String], outputPath: String = "/dev/null") throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // The test process may block or ignore signals (SIGTERM among them); the child starts with none of that.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for arg in argv { free(arg) } }
    var pid: Int32 = 0
    let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
    guard rc == 0 else { throw TestKitError("posix_spawn \(executable) failed: \(rc)") }
    return pid
}

/// SIGTERM, then SIGKILL after `timeout` seconds; waits for and reaps the child.
func terminate(_ pid: Int32, timeout: Double) {
    kill(pid, SIGTERM)
    var status: Int32 = 0
    let exited = waitUntil(timeout: timeout) { waitpid(pid, &status, WNOHANG) == pid }
    if !exited {
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
    }
}

/// A failure of a test helper.
public struct TestKitError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public var description: String
    /// A failure with this text.
    public init(_ description: String) { self.description = description }
}

/// Polls `check` every 20 ms until it is true or `timeout` seconds passed; returns its last answer.
public func waitUntil(timeout: Double = 10, _ check: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if check() { return true }
        usleep(20_000)
    }
    return check()
}

/// PING over a raw socket.
func redisAnswersPing(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
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
