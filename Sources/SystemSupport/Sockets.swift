#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CEpoll

/// An error from a socket call, with the call's name and errno text.
public struct SocketError: Error, Sendable, CustomStringConvertible {
    public var call: String
    public var errno: Int32
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// Thin helpers over POSIX sockets (IPv4 and IPv6 numeric hosts).
public enum Sockets {
    /// Opens a listening TCP socket on `host:port` (`port` 0 picks a free port: never one that
    /// `freeLoopbackPort` handed out lately, which a child process may be about to bind).
    public static func listen(host: String, port: Int, backlog: Int32 = 1024) throws -> Int32 {
        guard port == 0 else { return try bindAndListen(host: host, port: port, backlog: backlog) }
        for _ in 0..<64 {
            let fd = try bindAndListen(host: host, port: 0, backlog: backlog)
            if recentPorts.withLock({ $0.insert(localPort(fd)) }) { return fd }
            close(fd)
        }
        throw SocketError("bind \(host):0 (only recently handed-out ports came back)", errno: EADDRINUSE)
    }

    private static func bindAndListen(host: String, port: Int, backlog: Int32) throws -> Int32 {
        let addr = try makeAddress(host: host, port: port)
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = addr.withSockaddr { bind(fd, $0, $1) }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw SocketError("bind \(host):\(port)", errno: e)
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let e = errno
            close(fd)
            throw SocketError("listen", errno: e)
        }
        return fd
    }

    /// Accepts one connection as a blocking, close-on-exec socket (a child process spawned meanwhile
    /// must not inherit it: closing our copy would then never reach the peer). -1 with `errno` set on failure.
    public static func accept(_ listener: Int32) -> Int32 { cepoll_accept_blocking(listener) }

    /// Connects to `host:port` with a timeout; the returned socket is blocking.
    public static func connect(host: String, port: Int, timeoutMillis: Int32 = 2000) throws -> Int32 {
        let addr = try makeAddress(host: host, port: port)
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket", errno: errno) }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        let rc = addr.withSockaddr { Glibc.connect(fd, $0, $1) }
        if rc != 0 {
            guard errno == EINPROGRESS else {
                let e = errno
                close(fd)
                throw SocketError("connect \(host):\(port)", errno: e)
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let n = poll(&pfd, 1, timeoutMillis)
            if n <= 0 {
                close(fd)
                throw SocketError("connect \(host):\(port)", errno: n == 0 ? ETIMEDOUT : errno)
            }
            var soError: Int32 = 0
            var soLen = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &soLen)
            if soError != 0 {
                close(fd)
                throw SocketError("connect \(host):\(port)", errno: soError)
            }
        }
        _ = fcntl(fd, F_SETFL, flags)
        setNoDelay(fd)
        return fd
    }

    /// A free TCP port on 127.0.0.1: bound, read and released (the caller binds it right after).
    /// Never one of the last 4,096 ports this process bound with port 0 or handed out: the kernel
    /// may give a port just released again at once, to a second node or to a relay's listener
    /// while the first node is still starting.
    public static func freeLoopbackPort() throws -> Int {
        let fd = try listen(host: "127.0.0.1", port: 0)  // a port not handed out lately, now recorded
        defer { close(fd) }
        return localPort(fd)
    }

    /// The ports `freeLoopbackPort` handed out lately.
    private static let recentPorts = FastLock(RecentPorts())

    /// The local port a socket is bound to.
    public static func localPort(_ fd: Int32) -> Int {
        var addr = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return port(of: addr)
    }

    /// The numeric address of the peer, e.g. "127.0.0.1".
    public static func peerAddress(_ fd: Int32) -> String? {
        var addr = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if addr.ss_family == sa_family_t(AF_INET) {
            var sin = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee } }
            inet_ntop(AF_INET, &sin.sin_addr, &buf, socklen_t(buf.count))
        } else {
            var sin6 = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee } }
            inet_ntop(AF_INET6, &sin6.sin6_addr, &buf, socklen_t(buf.count))
        }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets the send timeout (SO_SNDTIMEO).
    public static func setSendTimeout(_ fd: Int32, millis: Int) {
        var tv = timeval(tv_sec: millis / 1000, tv_usec: (millis % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sets the receive timeout (SO_RCVTIMEO); 0 for none.
    public static func setReceiveTimeout(_ fd: Int32, millis: Int) {
        var tv = timeval(tv_sec: millis / 1000, tv_usec: (millis % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes all of `bytes`; false when the peer is gone or the send timed out.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return false
                }
            }
            return true
        }
    }

    /// The address of a numeric host ("localhost" stands for 127.0.0.1).
    static func makeAddress(host: String, port: Int) throws -> SocketAddress {
        guard (0...65535).contains(port) else { throw SocketError("address \(host):\(port)", errno: EINVAL) }
        guard let address = SocketAddress(host: host == "localhost" ? "127.0.0.1" : host, port: port) else {
            throw SocketError("address '\(host)' is not a numeric IPv4/IPv6 address", errno: EINVAL)
        }
        return address
    }

    static func port(of addr: sockaddr_storage) -> Int {
        var a = addr
        if a.ss_family == sa_family_t(AF_INET) {
            return withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            }
        }
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
        }
    }
}

/// A numeric IPv4 or IPv6 socket address (an IPv6 host may be in brackets).
public struct SocketAddress: Sendable {
    public var storage: sockaddr_storage
    /// The length of the `sockaddr_in` or `sockaddr_in6` in `storage`.
    public var length: socklen_t
    /// AF_INET or AF_INET6.
    public var family: Int32

    /// Nil when `host` is not a numeric address or `port` is not 0...65535.
    public init?(host: String, port: Int) {
        guard (0...65535).contains(port) else { return nil }
        var storage = sockaddr_storage()
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(port).bigEndian)
            sin.sin_addr = v4
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee = sin }
            }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            family = AF_INET
        } else if inet_pton(AF_INET6, host.trimmingBrackets, &v6) == 1 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(UInt16(port).bigEndian)
            sin6.sin6_addr = v6
            withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee = sin6 }
            }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            family = AF_INET6
        } else {
            return nil
        }
        self.storage = storage
    }

    /// Calls `body` with the address as a `sockaddr` and its length (for bind, connect, sendto).
    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        try withUnsafePointer(to: storage) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }
}

extension String {
    fileprivate var trimmingBrackets: String {
        hasPrefix("[") && hasSuffix("]") ? String(dropFirst().dropLast()) : self
    }
}

/// The last `capacity` ports handed out, oldest first out.
private struct RecentPorts {
    let capacity = 4_096
    var order: [Int] = []
    var members: Set<Int> = []

    /// Records `port`; false when it is among the recent ones already.
    mutating func insert(_ port: Int) -> Bool {
        guard members.insert(port).inserted else { return false }
        order.append(port)
        if order.count > capacity { members.remove(order.removeFirst()) }
        return true
    }
}
