#if canImport(Glibc)
import Glibc
#endif
import CEpoll
import Logging

/// What every epoll event loop starts with: an epoll instance watching a
/// listening socket shared by all loops (EPOLLEXCLUSIVE: one loop is woken
/// per new connection) and an eventfd that other threads use to wake it.
/// Other sockets are registered with `add`, with tokens other than
/// `listenToken` and `wakeToken`.
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
        precondition(EpollEvents.matchHeaders, "epoll's bits differ from the C headers'")
        self.listenFD = listenFD
        self.logger = logger
        epollFD = cepoll_create()
        guard epollFD >= 0 else { throw SocketError("epoll_create1", errno: errno) }
        wakeFD = cepoll_eventfd()
        guard wakeFD >= 0 else {
            close(epollFD)
            throw SocketError("eventfd", errno: errno)
        }
        guard add(listenFD, [.readable, .exclusive], token: Self.listenToken),
            add(wakeFD, .readable, token: Self.wakeToken)
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
    public func stopListening() { remove(listenFD) }

    /// Watches `fd` for `events`, reported with `token`; false (errno set) on failure.
    public func add(_ fd: Int32, _ events: EpollEvents, token: UInt64) -> Bool {
        cepoll_ctl(epollFD, 1, fd, events.rawValue, token) == 0
    }

    /// Changes what `fd` is watched for.
    @discardableResult
    public func modify(_ fd: Int32, _ events: EpollEvents, token: UInt64) -> Bool {
        cepoll_ctl(epollFD, 3, fd, events.rawValue, token) == 0
    }

    /// Stops watching `fd` (before it is closed).
    public func remove(_ fd: Int32) {
        _ = cepoll_ctl(epollFD, 2, fd, 0, 0)
    }

    /// Waits up to `timeoutMillis` for events into `ready`; returns how many
    /// arrived (0 on a timeout or an error, which is logged unless EINTR).
    public func wait(_ ready: inout ReadyEvents, timeoutMillis: Int32) -> Int {
        let n = ready.storage.withUnsafeMutableBufferPointer {
            cepoll_wait(epollFD, $0.baseAddress, Int32($0.count), timeoutMillis)
        }
        if n < 0 && errno != EINTR {
            logger.error("epoll_wait failed", metadata: ["error": "\(SocketError("epoll_wait", errno: errno))"])
        }
        let count = max(0, Int(n))
        ready.publish(count)
        return count
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

/// What a descriptor is watched for, and what an event reports (epoll's bits: the Linux ABI's
/// values, checked against the C headers' in `EpollPoller.init`). Inlinable, so a set written
/// as a literal in an event loop costs nothing at run time.
@frozen
public struct EpollEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// EPOLLIN: data (or a connection) to read.
    @inlinable public static var readable: EpollEvents { EpollEvents(rawValue: 0x001) }
    /// EPOLLOUT: room to write.
    @inlinable public static var writable: EpollEvents { EpollEvents(rawValue: 0x004) }
    /// EPOLLERR (always reported).
    @inlinable public static var error: EpollEvents { EpollEvents(rawValue: 0x008) }
    /// EPOLLHUP (always reported).
    @inlinable public static var hangUp: EpollEvents { EpollEvents(rawValue: 0x010) }
    /// EPOLLRDHUP: the peer closed its side.
    @inlinable public static var peerClosed: EpollEvents { EpollEvents(rawValue: 0x2000) }
    /// EPOLLEXCLUSIVE: one of the waiting loops is woken.
    @inlinable public static var exclusive: EpollEvents { EpollEvents(rawValue: 1 << 28) }
    /// EPOLLET: reported on a change only.
    @inlinable public static var edgeTriggered: EpollEvents { EpollEvents(rawValue: 1 << 31) }

    /// Whether these values are the C headers' (they are the kernel ABI's; checked once).
    static var matchHeaders: Bool {
        readable.rawValue == CEPOLL_IN && writable.rawValue == CEPOLL_OUT && error.rawValue == CEPOLL_ERR
            && hangUp.rawValue == CEPOLL_HUP && peerClosed.rawValue == CEPOLL_RDHUP
            && exclusive.rawValue == CEPOLL_EXCLUSIVE && edgeTriggered.rawValue == CEPOLL_ET
    }
}

/// One ready descriptor: what happened and the token it was added with.
@frozen
public struct ReadyEvent: Sendable {
    public var events: EpollEvents
    public var token: UInt64
    @inlinable public init(events: EpollEvents, token: UInt64) {
        self.events = events
        self.token = token
    }
}

/// The buffer `EpollPoller.wait` fills: up to `capacity` ready descriptors.
public struct ReadyEvents {
    @usableFromInline var events: [UInt32]
    @usableFromInline var tokens: [UInt64]
    fileprivate var storage: [cepoll_ready]

    public init(capacity: Int = 256) {
        storage = [cepoll_ready](repeating: cepoll_ready(), count: capacity)
        events = [UInt32](repeating: 0, count: capacity)
        tokens = [UInt64](repeating: 0, count: capacity)
    }

    /// The `index`th event of the last `wait` (below the count it returned).
    @inlinable public subscript(index: Int) -> ReadyEvent {
        ReadyEvent(events: EpollEvents(rawValue: events[index]), token: tokens[index])
    }

    /// Copies the first `count` raw events into Swift arrays the inlinable subscript reads.
    fileprivate mutating func publish(_ count: Int) {
        for i in 0..<count {
            events[i] = storage[i].events
            tokens[i] = storage[i].token
        }
    }
}
