#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// What `receiveSome` got from a socket.
public enum Received {
    case bytes(ArraySlice<UInt8>)
    /// The peer closed the connection (0), or reading failed (an error such as ECONNRESET).
    case closed
    /// Nothing arrived before the deadline.
    case timeout
    /// poll() itself failed.
    case pollFailed
}

/// Waits until `deadline` (ms on `monotonicMillis()`'s clock) for bytes on a
/// socket and reads what arrived, up to 64 KiB.
public func receiveSome(_ fd: Int32, deadline: Int64) -> Received {
    while true {
        let remaining = deadline - monotonicMillis()
        if remaining <= 0 { return .timeout }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = Glibc.poll(&pfd, 1, Int32(remaining))
        if n < 0 {
            if errno == EINTR { continue }
            return .pollFailed
        }
        if n == 0 { return .timeout }
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count > 0 { return .bytes(chunk[0..<count]) }
        if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
        return .closed
    }
}

/// Polls `condition` every few milliseconds until it holds or the time is up.
public func poll(timeoutMillis: Int, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicMillis() + Int64(timeoutMillis)
    while true {
        if condition() { return true }
        if monotonicMillis() >= deadline { return false }
        usleep(2_000)
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    public var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}

/// A blocking TCP connection to a local test server, closed at the latest when released.
open class TestConnection {
    public let fd: Int32
    /// The port on 127.0.0.1 it is connected to.
    public let port: Int
    private var isClosed = false

    public init(port: Int) throws {
        fd = try Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 2_000)
        self.port = port
    }

    deinit { close() }

    public func close() {
        if !isClosed {
            isClosed = true
            Glibc.close(fd)
        }
    }

    @discardableResult
    public func send(_ data: [UInt8]) -> Bool { Sockets.writeAll(fd, data) }

    @discardableResult
    public func send(_ text: String) -> Bool { send(Array(text.utf8)) }
}
