import Foundation
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// How a child process ended.
public enum ChildExit: Equatable, Sendable, CustomStringConvertible {
    /// `exit(code)`.
    case exited(Int32)
    /// Ended by a signal.
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exit code \(code)"
        case .signaled(let signal): "signal \(signal)"
        }
    }

    /// The exit code, or the signal's number (as Foundation's `Process.terminationStatus`).
    public var status: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): signal
        }
    }
}

/// A process a test starts and must stop, by its PID.
///
/// Started with posix_spawn: stdin from /dev/null, stdout and stderr to `logFile`,
/// no other descriptor of the test process (glibc 2.34 and later; but those
/// `descriptors` hands on),
/// default signal dispositions and an empty signal mask (the test process may
/// ignore or block SIGTERM, SIGINT or SIGPIPE: a child must not inherit that),
/// in the test's process group unless `ownProcessGroup` (so a Ctrl-C at the
/// terminal reaches it too). A signal is only sent while the child is not
/// reaped, under the lock that reaps it: a recycled PID is never signalled.
/// SIGKILL and reaped at the latest when released.
public final class ChildProcess: Sendable {
    /// The child's PID (its process group too, with `ownProcessGroup`).
    public let pid: pid_t
    /// Where its stdout and stderr go.
    public let logFile: URL
    private let ownsLogFile: Bool
    private let ended = Mutex<ChildExit?>(nil)

    /// The `session-cluster` binary built next to the test bundle (the test targets that spawn it
    /// declare it as a dependency, so `swift build --build-tests` builds it).
    public static func sessionClusterBinary() throws -> URL {
        try builtExecutable(named: "session-cluster")
    }

    /// `session-cluster node --strategy local` named `id`, on `port` (a free loopback port when
    /// nil), `arguments` after those; returns once `GET /healthz` answers 200 (throws, with the
    /// node's output, when it does not within 30 s).
    public static func sessionClusterNode(
        id: String, port: Int? = nil, arguments: [String] = []
    ) throws -> (process: ChildProcess, port: Int) {
        let binary = try sessionClusterBinary()
        return try startServer(port: port, timeout: 30) { port in
            try ChildProcess(binary, ["node", "--port", "\(port)", "--node-id", id, "--strategy", "local"] + arguments)
        } isUp: { port in
            (try? rawHTTP(port: port, "GET", "/healthz", timeoutMillis: 2_000))?.status == 200
        }
    }

    /// The executable `name` that `swift build` linked into the build directory of
    /// this test bundle (`.build/<triple>/debug`, which `.build/debug` points to).
    public static func builtExecutable(named name: String) throws -> URL {
        let candidates = [
            URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath(),
            Bundle.main.executableURL?.resolvingSymlinksInPath(),
            URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath(),
        ].compactMap { $0 }
        for start in candidates {
            var directory = start.deletingLastPathComponent()
            for _ in 0..<4 {
                let candidate = directory.appendingPathComponent(name)
                if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
                directory = directory.deletingLastPathComponent()
            }
        }
        throw TestError("\(name) not found near \(candidates.first?.path ?? "the test bundle"); run `swift build` first")
    }

    /// Starts `executable` with `arguments`, the test's environment plus `environment`.
    /// - Parameters:
    ///   - logFile: where stdout and stderr go (created or truncated, kept); a new
    ///     temporary file, removed when this is released, when nil.
    ///   - ownProcessGroup: whether the child leads a process group of its own.
    ///   - descriptors: descriptors of this process the child gets, by the number it
    ///     gets each as (above 2); the caller keeps and closes its own.
    public init(
        _ executable: URL, _ arguments: [String], environment: [String: String] = [:], logFile: URL? = nil,
        ownProcessGroup: Bool = false, descriptors: [Int32: Int32] = [:]
    ) throws {
        if let logFile {
            self.logFile = logFile
            ownsLogFile = false
        } else {
            self.logFile = FileManager.default.temporaryDirectory
                .appendingPathComponent("\(executable.lastPathComponent)-\(UUID().uuidString).log")
            ownsLogFile = true
        }
        var env = ProcessInfo.processInfo.environment
        for (name, value) in environment { env[name] = value }
        pid = try spawn(
            executable.path, arguments, environment: env, outputPath: self.logFile.path,
            ownProcessGroup: ownProcessGroup, descriptors: descriptors)
    }

    /// What the process wrote so far (stdout and stderr).
    public var output: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// How it ended, once it has (reaps it); nil while it runs.
    public var exit: ChildExit? {
        ended.withLock { ended in
            if ended == nil { ended = reap(pid, block: false) }
            return ended
        }
    }

    /// Whether it still runs (not reaped).
    public var isRunning: Bool { exit == nil }

    /// Sends `signal` unless it has ended; false when it had.
    @discardableResult
    public func send(_ signal: Int32) -> Bool {
        ended.withLock { ended in
            if ended == nil { ended = reap(pid, block: false) }
            return ended == nil && Glibc.kill(pid, signal) == 0
        }
    }

    /// Waits up to `timeout` seconds for the end; how it ended, or nil while it still runs.
    @discardableResult
    public func waitForExit(timeout: Double) -> ChildExit? {
        _ = waitUntil(timeout: timeout) { exit != nil }
        return exit
    }

    /// Sends `signal` and waits up to `timeout` seconds for the end; SIGKILL after that.
    /// Returns the exit code or the number of the signal that ended it (nil when it had to be killed).
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Double = 10) -> Int32? {
        send(signal)
        if let exit = waitForExit(timeout: timeout) { return exit.status }
        kill()
        return nil
    }

    /// SIGKILL unless it ended, and waits for the end (reaped). Safe to call again.
    public func kill() {
        ended.withLock { ended in
            if ended == nil { ended = reap(pid, block: false) }
            guard ended == nil else { return }
            _ = Glibc.kill(pid, SIGKILL)
            ended = reap(pid, block: true)
        }
    }

    deinit {
        kill()
        if ownsLogFile { try? FileManager.default.removeItem(at: logFile) }
    }
}

extension ChildProcess {
    /// Starts a server with `launch(port)` on `port`, or on a free loopback port when nil
    /// (on another when that one is taken before the server binds it: up to `attempts`
    /// times), and waits up to `timeout` seconds until `isUp(port)`. A server that ends
    /// or is not up in time is killed; the error then carries its output.
    public static func startServer(
        port fixedPort: Int? = nil, attempts: Int = 3, timeout: Double = 10, _ launch: (Int) throws -> ChildProcess,
        isUp: (Int) -> Bool
    ) throws -> (process: ChildProcess, port: Int) {
        var failure = TestError("no attempt to start a server")
        for _ in 0..<(fixedPort == nil ? max(attempts, 1) : 1) {
            let port = try fixedPort ?? Sockets.freeLoopbackPort()
            let process = try launch(port)
            let up = waitUntil(timeout: timeout) { !process.isRunning || isUp(port) }
            if up && process.isRunning { return (process, port) }
            process.kill()
            failure = TestError("the server on port \(port) did not start (\(process.exit.map { "\($0)" } ?? "not up")):\n\(process.output)")
        }
        throw failure
    }
}

/// Processes from /proc, zombies left out: a helper whose parent died is
/// reparented to init, which reaps it in its own time.
public enum ProcessTable {
    public struct Entry: Sendable {
        public var pid: pid_t
        public var parent: pid_t
        public var group: pid_t
    }

    /// Every live process.
    public static func live() -> [Entry] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry in pid_t(entry).flatMap(self.entry) }
    }

    /// The process `pid`, when it is alive.
    public static func entry(_ pid: pid_t) -> Entry? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "(comm)": state ppid pgrp ...
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, fields[0] != "Z", let parent = pid_t(fields[1]), let group = pid_t(fields[2]) else {
            return nil
        }
        return Entry(pid: pid, parent: parent, group: group)
    }

    public static func isAlive(_ pid: pid_t) -> Bool { entry(pid) != nil }

    /// The live children of `parent`.
    public static func children(of parent: pid_t) -> [pid_t] { live().filter { $0.parent == parent }.map(\.pid) }
}

/// Starts `executable` (see `ChildProcess`); returns its PID.
private func spawn(
    _ executable: String, _ arguments: [String], environment: [String: String], outputPath: String,
    ownProcessGroup: Bool, descriptors: [Int32: Int32]
) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // Through copies above every number the child gets (a descriptor to hand on may be 3 or 4
    // itself; dup2 onto itself would keep it close-on-exec), closed once the child has started.
    let lowestCopy = max(10, (descriptors.keys.max() ?? 0) + 1)
    var copies: [Int32] = []
    defer { for copy in copies { close(copy) } }
    for (childFD, parentFD) in descriptors.sorted(by: { $0.key < $1.key }) {
        guard childFD > 2 else { throw TestError("descriptor \(childFD): the child's 0, 1 and 2 are set already") }
        let copy = fcntl(parentFD, F_DUPFD_CLOEXEC, lowestCopy)
        guard copy >= 0 else { throw TestError("cannot copy descriptor \(parentFD): errno \(errno)") }
        copies.append(copy)
        posix_spawn_file_actions_adddup2(&actions, copy, childFD)
    }
    _ = closeFrom?(&actions, (descriptors.keys.max() ?? 2) + 1)

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    var allSignals = sigset_t()
    sigfillset(&allSignals)
    posix_spawnattr_setsigdefault(&attributes, &allSignals)
    var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
    if ownProcessGroup {
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= POSIX_SPAWN_SETPGROUP
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))

    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for pointer in argv + envp { free(pointer) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
    guard rc == 0 else { throw TestError("cannot start \(executable): \(String(cString: strerror(rc)))") }
    return pid
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later; not in the Glibc
/// module Swift imports): every descriptor from a number on closed in the child.
private let closeFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(
        symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

/// The child's end, when it has ended (reaped), or at once with `block`.
private func reap(_ pid: pid_t, block: Bool) -> ChildExit? {
    var status: Int32 = 0
    while true {
        let rc = waitpid(pid, &status, block ? 0 : WNOHANG)
        if rc == pid {
            // WIFEXITED / WEXITSTATUS / WTERMSIG (macros Swift does not import).
            return status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        }
        if rc == 0 { return nil }
        if errno == EINTR { continue }
        return .exited(-1)  // not our child any more (ECHILD): gone
    }
}

/// A failure of a test helper, or of a test's setup.
public struct TestError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Polls `check` every 20 ms until it returns true or `timeout` seconds pass; returns its last answer.
public func waitUntil(timeout: Double = 10, _ check: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if check() { return true }
        usleep(20_000)
    }
    return check()
}
