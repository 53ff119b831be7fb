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
/// Started with SystemSupport's `spawnProcess`: stdin from /dev/null, stdout and stderr
/// to `logFile`, no other descriptor of the test process (but those `descriptors` hands
/// on), default signal dispositions and an empty signal mask, in the test's process
/// group unless `ownProcessGroup` (so a Ctrl-C at the terminal reaches it too). A signal
/// is only sent while the child is not reaped, under the lock that reaps it: a recycled
/// PID is never signalled. SIGKILL and reaped at the latest when released.
///
/// It dies with the test runner, however the runner ends (a crash, SIGKILL): a
/// `ParentDeathGuard` watches the runner for it (for its whole process group with
/// `ownProcessGroup`: Chromium's helpers too), and is dismissed once the child is reaped.
public final class ChildProcess: Sendable {
    /// The child's PID (its process group too, with `ownProcessGroup`).
    public let pid: pid_t
    /// Where its stdout and stderr go.
    public let logFile: URL
    private let ownsLogFile: Bool
    private let ended = Mutex<ChildExit?>(nil)
    /// Kills the child should the test runner die first.
    public let parentDeathGuard: ParentDeathGuard

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
        let pid: pid_t
        do {
            pid = try spawnProcess(
                executable.path, arguments, environment: env,
                settings: SpawnSettings(
                    outputPath: self.logFile.path, ownProcessGroup: ownProcessGroup, descriptors: descriptors))
        } catch {
            throw TestError(error.description)
        }
        do {
            parentDeathGuard = try ParentDeathGuard(protecting: pid, processGroup: ownProcessGroup)
        } catch {
            Glibc.kill(pid, SIGKILL)
            _ = reapProcess(pid, block: true)
            throw TestError(error.description)
        }
        self.pid = pid
    }

    /// What the process wrote so far (stdout and stderr).
    public var output: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// How it ended, once it has (reaps it); nil while it runs.
    public var exit: ChildExit? {
        ended.withLock { ended in
            if ended == nil { ended = reap(block: false) }
            return ended
        }
    }

    /// Whether it still runs (not reaped).
    public var isRunning: Bool { exit == nil }

    /// Sends `signal` unless it has ended; false when it had.
    @discardableResult
    public func send(_ signal: Int32) -> Bool {
        ended.withLock { ended in
            if ended == nil { ended = reap(block: false) }
            return ended == nil && Glibc.kill(pid, signal) == 0
        }
    }

    /// SIGSTOP, and waits until every thread has stopped (`waitUntilProcessStopped`: kill(2) returns
    /// while the other threads of a multithreaded process may still run); false when it had
    /// ended or did not stop within `timeout` seconds.
    @discardableResult
    public func freeze(timeout: Double = 5) -> Bool {
        send(SIGSTOP) && waitUntilProcessStopped(pid, timeoutMillis: Int64(timeout * 1_000))
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
            if ended == nil { ended = reap(block: false) }
            guard ended == nil else { return }
            _ = Glibc.kill(pid, SIGKILL)
            ended = reap(block: true)
        }
    }

    /// Reaps the child once it has ended (at once with `block`), then dismisses the guard
    /// (the PID is no longer the child's). Call under `ended`'s lock.
    private func reap(block: Bool) -> ChildExit? {
        let end: ChildExit?
        switch reapProcess(pid, block: block) {
        case nil: return nil
        case .exited(let code): end = .exited(code)
        case .signaled(let signal): end = .signaled(signal)
        case .notOurChild: end = .exited(-1)  // not our child any more (ECHILD): gone
        }
        parentDeathGuard.dismiss()
        return end
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
