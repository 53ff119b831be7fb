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

/// A child process started with `spawnProcess` (SystemSupport): stdin from /dev/null (or a given
/// descriptor), stdout and stderr appended to a log file, no other descriptor of this process, default
/// signal dispositions, its own process group (a Ctrl-C at the terminal reaches only the supervisor, which then stops
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
        do {
            pid = try spawnProcess(
                executable, arguments, environment: environment,
                settings: SpawnSettings(
                    outputPath: logPath, appendOutput: true, standardInput: standardInput, ownProcessGroup: true))
        } catch {
            throw SupervisorError(error.description)
        }
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
        switch reapProcess(pid, block: block) {
        case nil: nil
        case .exited(let code): .exited(code: code)
        case .signaled(let signal): .signaled(signal: signal)
        case .notOurChild: .exited(code: -1)  // not our child any more (ECHILD): treat as gone
        }
    }
}
