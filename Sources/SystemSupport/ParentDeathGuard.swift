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
/// the watcher's `read` then sees end-of-file and it kills the child by PID (its
/// whole process group, for a child that leads one).
///
/// Unlike `PR_SET_PDEATHSIG`, which fires when the *thread* that spawned the child
/// ends (a short-lived thread may start a child that must outlive it), the socket
/// belongs to the whole process.
///
/// `dismiss()` (before the child is reaped, so that its PID cannot have been reused)
/// stops the watcher first and closes this end after, so a dismissed guard never kills.
public final class ParentDeathGuard: Sendable {
    /// The PID the watcher kills.
    public let protectedPID: pid_t
    /// The watcher's PID (a child of this process, in a process group of its own, until dismissed).
    public let watcherPID: pid_t
    /// This process's end; -1 once dismissed.
    private let ownEnd: Mutex<Int32>

    /// The watcher's script: block until end-of-file on stdin, then SIGKILL `$1` (a PID, or `-PGID`;
    /// dash's `kill` takes neither `--` nor `-s KILL` before a negative number, but `-9`).
    private static let script = "read -r _; kill -9 \"$1\" 2>/dev/null; exit 0"

    /// Starts the watcher for `pid` (for its whole process group with `processGroup`:
    /// `pid` must then lead one); the watcher's output (none, normally) is appended to `logPath`.
    public init(protecting pid: pid_t, processGroup: Bool = false, logPath: String = "/dev/null") throws(SpawnError) {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw SpawnError("cannot create a socket pair for the guard of pid \(pid): \(String(cString: strerror(errno)))")
        }
        defer { close(ends[0]) }  // the watcher has its own copy, as stdin
        do {
            // Its own process group: a Ctrl-C meant for this process's group leaves the watcher be.
            watcherPID = try spawnProcess(
                "/bin/sh", ["-c", Self.script, "parent-death-guard", processGroup ? "-\(pid)" : "\(pid)"],
                environment: ["PATH": "/usr/bin:/bin"],
                settings: SpawnSettings(
                    outputPath: logPath, appendOutput: true, standardInput: ends[0], ownProcessGroup: true))
        } catch {
            close(ends[1])
            throw error
        }
        protectedPID = pid
        ownEnd = Mutex(ends[1])
    }

    /// Whether `dismiss()` has run.
    public var isDismissed: Bool { ownEnd.withLock { $0 < 0 } }

    /// Stops the watcher (SIGKILL, reaped), then closes this process's end: the protected
    /// process is left alone. Idempotent.
    public func dismiss() {
        ownEnd.withLock { fd in
            guard fd >= 0 else { return }
            kill(watcherPID, SIGKILL)
            _ = reapProcess(watcherPID, block: true)
            close(fd)
            fd = -1
        }
    }

    /// What the process's death does to the guard, now, without dying: closes this
    /// process's end (the watcher then kills the protected process) and reaps the watcher.
    /// For tests of the guard itself.
    public func simulateParentDeath() {
        ownEnd.withLock { fd in
            guard fd >= 0 else { return }
            close(fd)
            fd = -1
            _ = reapProcess(watcherPID, block: true)
        }
    }

    deinit { dismiss() }
}
