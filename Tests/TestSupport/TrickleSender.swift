#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import SystemSupport

/// Sends bytes one at a time, `intervalMillis` apart, on a thread of its own:
/// a client that keeps a connection busy without ever finishing a body.
/// It ends when every byte is sent, a send fails (the peer closed), or at `stop()`.
public final class TrickleSender: Sendable {
    private let stopped = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    /// Bytes sent so far.
    private let sentCount = Atomic<Int>(0)

    public init(_ fd: Int32, _ bytes: [UInt8], intervalMillis: Int) {
        startThread { [self] in
            defer { finished.store(true, ordering: .sequentiallyConsistent) }
            for byte in bytes {
                if stopped.load(ordering: .sequentiallyConsistent) { return }
                guard Sockets.writeAll(fd, [byte]) else { return }
                sentCount.add(1, ordering: .relaxed)
                usleep(UInt32(intervalMillis) * 1_000)
            }
        }
    }

    /// Bytes sent so far.
    public var sent: Int { sentCount.load(ordering: .relaxed) }

    /// Stops sending and waits (up to 5 s) for the thread to end; false if it did not.
    @discardableResult
    public func stop() -> Bool {
        stopped.store(true, ordering: .sequentiallyConsistent)
        return poll(timeoutMillis: 5_000) { finished.load(ordering: .sequentiallyConsistent) }
    }
}
