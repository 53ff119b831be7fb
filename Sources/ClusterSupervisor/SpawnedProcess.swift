#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import Synchronization
import SystemSupport

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(code: Int32)
    case signaled(signal: Int32)

    init(waitStatus status: Int32) {
        let signal = status & 0x7f
        self = signal == 0 ? .exited(code: (status >> 8) & 0xff) : .signaled(signal: signal)
    }

    public var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let signal): "killed by \(signalName(signal))"
        }
    }
}

/// SIGKILL, SIGTERM, ... or the number.
func signalName(_ signal: Int32) -> String {
    switch signal {
    case SIGKILL: "SIGKILL"
    case SIGTERM: "SIGTERM"
    case SIGINT: "SIGINT"
    case SIGSEGV: "SIGSEGV"
    case SIGABRT: "SIGABRT"
    case SIGILL: "SIGILL"
    case SIGTRAP: "SIGTRAP"
    case SIGBUS: "SIGBUS"
    default: "signal \(signal)"
    }
}

/// The supervisor could not do what it was asked.
public struct SupervisorError: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable {
        case failed
        /// No node has that name.
        case notFound = "not_found"
        /// The action does not fit the node's state (e.g. resume a running node).
        case conflict
    }

    public var kind: Kind
    public var message: String
    public init(kind: Kind = .failed, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

/// A child process started with `posix_spawn`: stdin from /dev/null (or a given descriptor), stdout and
/// stderr appended to a log file, default signal dispositions, its own process
/// group (a Ctrl-C at the terminal reaches only the supervisor, which then stops
/// its children in order).
///
/// Signals are sent only while the child has not been reaped, under the same
/// lock as the reaping, so a recycled PID is never signalled.
public final class SpawnedProcess: Sendable {
    public let pid: pid_t
    public let logPath: String
    private let status = Mutex<ExitStatus?>(nil)

    /// - Parameter standardInput: a descriptor of this process the child gets as its stdin
    ///   (the caller keeps and closes its own); /dev/null when nil.
    public init(
        executable: String, arguments: [String], environment: [String: String], logPath: String,
        standardInput: Int32? = nil
    ) throws(SupervisorError) {
        self.logPath = logPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        let argv = [executable] + arguments
        let envp = environment.map { "\($0.key)=\($0.value)" }
        var child: pid_t = 0
        let rc = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnvp in posix_spawn(&child, executable, &actions, &attributes, cArgv, cEnvp) }
        }
        guard rc == 0 else {
            throw SupervisorError("cannot start \(executable): \(String(cString: strerror(rc)))")
        }
        pid = child
    }

    /// How it ended; nil while it runs (reaps it when it has ended).
    public var exitStatus: ExitStatus? {
        status.withLock { status in
            if status == nil { status = Self.reap(pid, block: false) }
            return status
        }
    }

    public var isRunning: Bool { exitStatus == nil }

    /// Sends `signal`; false when the process has already ended.
    @discardableResult
    public func send(_ signal: Int32) -> Bool {
        status.withLock { status in
            if status == nil { status = Self.reap(pid, block: false) }
            guard status == nil else { return false }
            return kill(pid, signal) == 0
        }
    }

    /// Waits up to `timeoutMillis` for the end; its status, or nil when it still runs.
    @discardableResult
    public func waitForExit(timeoutMillis: Int) -> ExitStatus? {
        let deadline = monotonicMillis() + Int64(timeoutMillis)
        while true {
            if let ended = exitStatus { return ended }
            if monotonicMillis() >= deadline { return nil }
            usleep(2_000)
        }
    }

    /// SIGTERM (and SIGCONT, should it be stopped), then SIGKILL after `graceMillis`; waits for the end.
    @discardableResult
    public func terminate(graceMillis: Int) -> ExitStatus {
        if send(SIGTERM) { send(SIGCONT) }
        if let ended = waitForExit(timeoutMillis: graceMillis) { return ended }
        send(SIGKILL)
        return status.withLock { status in
            if status == nil { status = Self.reap(pid, block: true) }
            return status ?? .signaled(signal: SIGKILL)
        }
    }

    /// SIGTERM (and SIGCONT) to every process at once, then waits for all of them together;
    /// SIGKILL to those still running after `graceMillis`. Their statuses, in order.
    @discardableResult
    public static func terminateAll(_ processes: [SpawnedProcess], graceMillis: Int) -> [ExitStatus] {
        for process in processes where process.send(SIGTERM) { process.send(SIGCONT) }
        let deadline = monotonicMillis() + Int64(graceMillis)
        var statuses = [ExitStatus?](repeating: nil, count: processes.count)
        while true {
            for (index, process) in processes.enumerated() where statuses[index] == nil {
                statuses[index] = process.exitStatus
            }
            if !statuses.contains(nil) || monotonicMillis() >= deadline { break }
            usleep(2_000)
        }
        return processes.enumerated().map { index, process in statuses[index] ?? process.terminate(graceMillis: 0) }
    }

    private static func reap(_ pid: pid_t, block: Bool) -> ExitStatus? {
        var raw: Int32 = 0
        while true {
            let rc = waitpid(pid, &raw, block ? 0 : WNOHANG)
            if rc == pid { return ExitStatus(waitStatus: raw) }
            if rc == 0 { return nil }
            if errno == EINTR { continue }
            return .exited(code: -1)  // not our child any more (ECHILD): treat as gone
        }
    }
}

/// Calls `body` with a NULL-terminated array of C strings.
private func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for p in pointers { free(p) } }
    return body(pointers)
}
