#if canImport(Glibc)
import Glibc
#endif

/// Waits up to `timeoutMillis` until every thread of process `pid` has stopped after
/// a SIGSTOP; false when one still runs then (or the process is gone).
///
/// `kill(pid, SIGSTOP)` returns before a multithreaded process has stopped: the kernel
/// wakes one thread to take the signal, and that thread stops the others when it next
/// runs. On a busy machine that is milliseconds later, and until then the other threads
/// go on running — an event loop accepts a connection and answers a request sent
/// "after" the SIGSTOP. A caller that must know the process runs nothing more sends
/// SIGSTOP and then waits here.
public func waitUntilProcessStopped(_ pid: pid_t, timeoutMillis: Int64 = 5_000) -> Bool {
    let deadline = monotonicMillis() + timeoutMillis
    while true {
        if let stopped = everyThreadStopped(pid), stopped { return true }
        if monotonicMillis() >= deadline { return false }
        sleepMillis(1)
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in /proc/PID/task/TID/stat);
/// nil when the process is gone.
func everyThreadStopped(_ pid: pid_t) -> Bool? {
    guard let directory = opendir("/proc/\(pid)/task") else { return nil }
    defer { closedir(directory) }
    var threads = 0
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard let tid = Int32(name) else { continue }  // "." and ".."
        // A thread that ended since readdir has no stat: it runs nothing either.
        guard let state = threadState(pid, tid) else { continue }
        if state != UInt8(ascii: "T") { return false }
        threads += 1
    }
    return threads > 0 ? true : nil
}

/// The state letter of thread `tid` of `pid`: the field after "(comm) " in its stat file.
private func threadState(_ pid: pid_t, _ tid: Int32) -> UInt8? {
    let fd = open("/proc/\(pid)/task/\(tid)/stat", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 512)
    let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard count > 0 else { return nil }
    // comm may hold spaces and parentheses: the state follows the last ')'.
    guard let close = buffer[0..<count].lastIndex(of: UInt8(ascii: ")")), close + 2 < count else { return nil }
    return buffer[close + 2]
}
