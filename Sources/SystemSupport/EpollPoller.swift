#if canImport(Glibc)
import Glibc
#endif
import CEpoll
import Logging

/// What every epoll event loop starts with: an epoll instance watching a
/// listening socket shared by all loops (EPOLLEXCLUSIVE: one loop is woken
/// per new connection) and an eventfd that other threads use to wake it.
/// Other sockets are registered with `cepoll_ctl` on `epollFD`, with tokens
/// other than `listenToken` and `wakeToken`.
public struct EpollPoller: Sendable {
    /// The token of events of the listening socket.
    public static let listenToken: UInt64 = UInt64.max
    /// The token of `wake()`s.
    public static let wakeToken: UInt64 = UInt64.max - 1

    public let epollFD: Int32
    public let wakeFD: Int32
    public let listenFD: Int32
    /// Where `wait` and `acceptPending` report failures.
    public let logger: Logger

    public init(listenFD: Int32, logger: Logger) throws {
        self.listenFD = listenFD
        self.logger = logger
        epollFD = cepoll_create()
        guard epollFD >= 0 else { throw SocketError("epoll_create1", errno: errno) }
        wakeFD = cepoll_eventfd()
        guard wakeFD >= 0 else {
            close(epollFD)
            throw SocketError("eventfd", errno: errno)
        }
        guard cepoll_ctl(epollFD, 1, listenFD, CEPOLL_IN | CEPOLL_EXCLUSIVE, Self.listenToken) == 0,
            cepoll_ctl(epollFD, 1, wakeFD, CEPOLL_IN, Self.wakeToken) == 0
        else {
            let e = errno
            closeDescriptors()
            throw SocketError("epoll_ctl", errno: e)
        }
    }

    /// Closes the epoll instance and the eventfd (not the listening socket).
    public func closeDescriptors() {
        close(epollFD)
        close(wakeFD)
    }

    /// Wakes the loop from another thread.
    public func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// Resets the eventfd after a `wakeToken` event.
    public func consumeWake() {
        var value: UInt64 = 0
        _ = read(wakeFD, &value, 8)
    }

    /// Stops watching the listening socket (at shutdown).
    public func stopListening() {
        _ = cepoll_ctl(epollFD, 2, listenFD, 0, 0)
    }

    /// Waits up to `timeoutMillis` for events into `ready`; returns how many
    /// arrived (0 on a timeout or an error, which is logged unless EINTR).
    public func wait(_ ready: inout [cepoll_ready], timeoutMillis: Int32) -> Int {
        let n = ready.withUnsafeMutableBufferPointer {
            cepoll_wait(epollFD, $0.baseAddress, Int32($0.count), timeoutMillis)
        }
        if n < 0 && errno != EINTR {
            logger.error("epoll_wait failed", metadata: ["error": "\(SocketError("epoll_wait", errno: errno))"])
        }
        return max(0, Int(n))
    }

    /// Accepts up to `limit` pending connections (non-blocking, close-on-exec)
    /// and hands each to `body`. A few per wake-up, so that the other loops
    /// (woken one at a time by EPOLLEXCLUSIVE) get their share of a burst.
    public func acceptPending(limit: Int, _ body: (Int32) -> Void) {
        for _ in 0..<limit {
            let fd = cepoll_accept(listenFD)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                    logger.error("accept failed: out of descriptors or memory", metadata: ["errno": "\(errno)"])
                }
                return
            }
            body(fd)
        }
    }
}
