#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Kills one child process (SIGKILL) should this process end without stopping it,
/// however it ends: exit, crash or SIGKILL.
///
/// A child that cannot watch its parent itself (redis-server does not poll
/// `getppid()` as the nodes do) gets a watcher: a small `/bin/sh` whose stdin is
/// one end of a socket pair whose other end only this process holds (created
/// `SOCK_CLOEXEC`, atomically, so no child spawned meanwhile by another thread
/// inherits it). The kernel closes that end when this process dies, in any way;
/// the watcher's `read` then sees end-of-file and it kills the child by PID.
///
/// Unlike `PR_SET_PDEATHSIG`, which fires when the *thread* that spawned the child
/// ends (the control API restarts Redis from a short-lived thread), the pipe
/// belongs to the whole process.
///
/// `dismiss()` (before the child is reaped, so that its PID cannot have been reused)
/// stops the watcher first and closes this end after, so a dismissed guard never kills.
final class ParentDeathGuard: Sendable {
    /// The PID the watcher kills.
    let protectedPID: pid_t
    private let watcher: SpawnedProcess
    /// This process's end; -1 once dismissed.
    private let ownEnd: Mutex<Int32>

    /// The watcher's script: block until end-of-file on stdin, then SIGKILL `$1`.
    private static let script = "read -r _; kill -KILL \"$1\" 2>/dev/null; exit 0"

    /// Starts the watcher for `pid`; its output (none, normally) is appended to `logPath`.
    init(protecting pid: pid_t, logPath: String) throws(SupervisorError) {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw SupervisorError("cannot create a socket pair for the guard of pid \(pid): \(String(cString: strerror(errno)))")
        }
        defer { close(ends[0]) }  // the watcher has its own copy, as stdin
        do {
            watcher = try SpawnedProcess(
                executable: "/bin/sh", arguments: ["-c", Self.script, "parent-death-guard", "\(pid)"], environment: [:],
                logPath: logPath, standardInput: ends[0])
        } catch {
            close(ends[1])
            throw error
        }
        protectedPID = pid
        ownEnd = Mutex(ends[1])
    }

    /// The watcher's PID (a child of this process until dismissed).
    var watcherPID: pid_t { watcher.pid }

    /// Stops the watcher (SIGKILL, reaped), then closes this process's end: the protected
    /// process is left alone. Idempotent.
    func dismiss() {
        ownEnd.withLock { fd in
            guard fd >= 0 else { return }
            watcher.send(SIGKILL)
            watcher.waitForExit(timeoutMillis: 5_000)
            close(fd)
            fd = -1
        }
    }

    deinit { dismiss() }
}
