import Foundation
import Synchronization
import SystemSupport

/// A private redis-server on a loopback port, for tests: no persistence, its files in
/// a new temporary directory (removed when this is released), started as a
/// `ChildProcess` and stopped by its PID. It can be killed (SIGKILL, as in a crash)
/// and started again on the same port, empty.
public final class RedisServerProcess: Sendable {
    public let port: Int
    public let directory: URL
    private let extraArguments: [String]
    private let child: Mutex<ChildProcess?>

    /// Whether redis-server is installed (scripts/test.sh installs it).
    public static var isInstalled: Bool { executable != nil }

    static var executable: URL? {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let url = URL(fileURLWithPath: dir).appendingPathComponent("redis-server")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }

    /// The Redis a test uses: `$REDIS_URL`'s when it is set (scripts/test.sh exports it),
    /// otherwise a new private one (`server`, stopped when the caller releases it).
    public static func fromEnvironmentOrPrivate() throws -> (url: String, server: RedisServerProcess?) {
        if let url = ProcessInfo.processInfo.environment["REDIS_URL"], !url.isEmpty { return (url, nil) }
        let server = try RedisServerProcess()
        return (server.url, server)
    }

    /// Starts redis-server on `port` (a free one when nil, another when that one is taken
    /// before redis-server binds it), with `extraArguments` after the defaults
    /// (e.g. `--replicaof`), and waits until it answers PING.
    public init(port: Int? = nil, extraArguments: [String] = []) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        do {
            let (child, port) = try ChildProcess.startServer(port: port) { port in
                try RedisServerProcess.launch(port: port, directory: directory, extraArguments: extraArguments)
            } isUp: { port in
                RedisServerProcess.answersPing(port: port)
            }
            self.child = Mutex(child)
            self.port = port
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
        self.directory = directory
        self.extraArguments = extraArguments
    }

    public var url: String { "redis://127.0.0.1:\(port)/0" }

    /// The PID of the redis-server running now; nil when it is down.
    public var pid: Int32? { child.withLock { $0?.isRunning == true ? $0?.pid : nil } }

    /// What the redis-server started last wrote (stdout and stderr).
    public var output: String { child.withLock { $0?.output } ?? "" }

    /// Starts it again (after `kill()` or `stop()`), on the same port, empty; waits until it answers PING.
    public func start() throws {
        kill()
        let (child, _) = try ChildProcess.startServer(port: port) { port in
            try Self.launch(port: port, directory: directory, extraArguments: extraArguments)
        } isUp: { port in
            Self.answersPing(port: port)
        }
        self.child.withLock { $0 = child }
    }

    /// SIGKILL, as a crash; waits until it has ended.
    public func kill() {
        child.withLock { $0 }?.kill()
    }

    /// SIGTERM, then SIGKILL after `timeout` seconds; waits until it has ended.
    public func stop(timeout: Double = 5) {
        child.withLock { $0 }?.stop(signal: SIGTERM, timeout: timeout)
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    private static func launch(port: Int, directory: URL, extraArguments: [String]) throws -> ChildProcess {
        guard let executable else { throw TestError("redis-server is not installed (apt-get install redis-server)") }
        return try ChildProcess(
            executable,
            [
                "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", directory.path, "--dbfilename", "dump-\(port).rdb",
            ] + extraArguments)
    }

    /// Whether a Redis (or Sentinel) on `port` answers PING.
    public static func answersPing(port: Int) -> Bool {
        guard let connection = try? TestConnection(port: port), connection.send("PING\r\n"),
            case .bytes(let reply) = receiveSome(connection.fd, deadline: monotonicMillis() + 300)
        else { return false }
        return String(decoding: reply, as: UTF8.self).hasPrefix("+PONG")
    }
}
