#if canImport(Glibc)
import Glibc
#endif

/// How `spawnProcess` sets up a child's descriptors and process group.
public struct SpawnSettings: Sendable {
    /// Where stdout and stderr go (created when missing).
    public var outputPath: String
    /// Append to `outputPath` rather than truncate it.
    public var appendOutput: Bool
    /// A descriptor of this process the child gets as its stdin (the caller keeps and
    /// closes its own); /dev/null when nil.
    public var standardInput: Int32?
    /// Whether the child leads a process group of its own (a Ctrl-C at the terminal
    /// then reaches only this process); otherwise it joins this process's group.
    public var ownProcessGroup: Bool
    /// Descriptors of this process the child gets, by the number it gets each as
    /// (above 2); the caller keeps and closes its own.
    public var descriptors: [Int32: Int32]

    public init(
        outputPath: String = "/dev/null", appendOutput: Bool = false, standardInput: Int32? = nil,
        ownProcessGroup: Bool = false, descriptors: [Int32: Int32] = [:]
    ) {
        self.outputPath = outputPath
        self.appendOutput = appendOutput
        self.standardInput = standardInput
        self.ownProcessGroup = ownProcessGroup
        self.descriptors = descriptors
    }
}

/// A child process could not be started.
public struct SpawnError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Starts `executable` with `posix_spawn`; returns its PID.
///
/// The child gets stdin, stdout and stderr as `settings` says, no other descriptor of
/// this process (glibc 2.34 and later; but those `settings.descriptors` hands on),
/// default signal dispositions and an empty signal mask (this process may ignore or
/// block SIGTERM, SIGINT or SIGPIPE: a child must not inherit that), and exactly
/// `environment`. Reap it with `reapProcess`.
public func spawnProcess(
    _ executable: String, _ arguments: [String], environment: [String: String], settings: SpawnSettings = SpawnSettings()
) throws(SpawnError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let standardInput = settings.standardInput {
        posix_spawn_file_actions_adddup2(&actions, standardInput, 0)
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    }
    let mode = settings.appendOutput ? O_APPEND : O_TRUNC
    posix_spawn_file_actions_addopen(&actions, 1, settings.outputPath, O_WRONLY | O_CREAT | mode, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    // Through copies above every number the child gets (a descriptor to hand on may be 3 or 4
    // itself; dup2 onto itself would keep it close-on-exec), closed once the child has started.
    let descriptors = settings.descriptors
    let lowestCopy = max(10, (descriptors.keys.max() ?? 0) + 1)
    var copies: [Int32] = []
    defer { for copy in copies { close(copy) } }
    for (childFD, parentFD) in descriptors.sorted(by: { $0.key < $1.key }) {
        guard childFD > 2 else { throw SpawnError("descriptor \(childFD): the child's 0, 1 and 2 are set already") }
        let copy = fcntl(parentFD, F_DUPFD_CLOEXEC, lowestCopy)
        guard copy >= 0 else { throw SpawnError("cannot copy descriptor \(parentFD): \(String(cString: strerror(errno)))") }
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
    if settings.ownProcessGroup {
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= POSIX_SPAWN_SETPGROUP
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))

    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for pointer in argv + envp { free(pointer) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
    guard rc == 0 else { throw SpawnError("cannot start \(executable): \(String(cString: strerror(rc)))") }
    return pid
}

/// How a reaped child ended.
public enum ProcessEnd: Sendable, Equatable {
    /// `exit(code)`.
    case exited(Int32)
    /// Ended by a signal.
    case signaled(Int32)
    /// Not a child of this process (any more): someone else reaped it.
    case notOurChild
}

/// The end of the child `pid`, reaping it, once it has ended (at once with `block`); nil while it runs.
public func reapProcess(_ pid: pid_t, block: Bool) -> ProcessEnd? {
    var status: Int32 = 0
    while true {
        let rc = waitpid(pid, &status, block ? 0 : WNOHANG)
        if rc == pid {
            // WIFEXITED / WEXITSTATUS / WTERMSIG (macros Swift does not import).
            return status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        }
        if rc == 0 { return nil }
        if errno == EINTR { continue }
        return .notOurChild
    }
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later; not in the Glibc
/// module Swift imports): every descriptor from a number on closed in the child.
private let closeFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(
        symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()
