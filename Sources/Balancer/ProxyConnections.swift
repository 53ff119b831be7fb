#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SystemSupport

/// Bytes waiting to be written to a socket, consumed from the front.
struct OutputBuffer {
    private(set) var bytes: [UInt8] = []
    private(set) var offset = 0

    init() {}
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var pending: Int { bytes.count - offset }
    var isEmpty: Bool { bytes.count == offset }

    mutating func append(_ more: [UInt8]) { bytes.append(contentsOf: more) }
    mutating func append<S: Sequence>(contentsOf more: S) where S.Element == UInt8 { bytes.append(contentsOf: more) }

    /// Marks `n` bytes as written.
    mutating func consume(_ n: Int) {
        offset += n
        if offset == bytes.count {
            bytes.removeAll(keepingCapacity: bytes.capacity <= 128 * 1024)
            offset = 0
        } else if offset > 64 * 1024 && offset * 2 > bytes.count {
            bytes.removeFirst(offset)
            offset = 0
        }
    }

    /// Writes what `fd` takes without blocking: how many bytes were written,
    /// and whether the connection failed (after those bytes).
    mutating func send(to fd: Int32) -> (written: Int, failed: Bool) {
        var written = 0
        while pending > 0 {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, pending, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                consume(n)
                written += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                return (written, true)  // errno tells why
            }
        }
        return (written, false)
    }

    /// Forgets everything, keeping no big allocation.
    mutating func reset() {
        bytes = []
        offset = 0
    }
}

/// A socket registered with a loop's epoll.
class LoopSocket {
    let fd: Int32
    let id: UInt64
    var isOpen = true
    /// Registered edge-triggered: an event said bytes (or a hang-up) may be waiting,
    /// and no read since came back short or empty.
    var readable = false
    /// The peer's side closed or the connection failed (EPOLLRDHUP, EPOLLHUP or EPOLLERR):
    /// reads go on until they return 0 or an error.
    var hangup = false
    /// In the loop's epoll set (a backend that closed is taken out: epoll would report its hang-up forever).
    var registered = true

    init(fd: Int32, id: UInt64) {
        self.fd = fd
        self.id = id
    }

    var token: UInt64 { id << 32 | UInt64(UInt32(bitPattern: fd)) }
}

/// A client connection, owned by its loop's thread.
final class ClientConnection: LoopSocket {
    let remoteAddress: String
    var parser: HTTPRequestParser
    var output = OutputBuffer()
    /// The request being forwarded; later pipelined requests wait in the parser.
    var exchange: Exchange?
    /// The client finished sending (read returned 0).
    var peerClosed = false
    /// Close once the output is written; read nothing more.
    var closeAfterWrite = false
    /// Monotonic ms of the first byte of a request head not yet complete (0: none).
    var messageStart: Int64 = 0
    var lastRead: Int64
    var lastWrite: Int64
    /// In the loop's run queue.
    var queued = false
    /// A hang-up or an error was reported (EPOLLHUP, EPOLLERR): once it no longer reads, it is closed.
    var hungUp = false
    /// The rate limit bucket its requests count against.
    lazy var rateLimitKey = RateLimitKey(address: remoteAddress)

    init(fd: Int32, id: UInt64, remoteAddress: String, limits: HTTPParserLimits, now: Int64) {
        self.remoteAddress = remoteAddress
        parser = HTTPRequestParser(limits: limits)
        lastRead = now
        lastWrite = now
        super.init(fd: fd, id: id)
    }

    /// No request in progress and nothing to write.
    var isIdle: Bool { exchange == nil && messageStart == 0 && output.isEmpty }
}

/// A connection to a backend, owned by one loop: idle in the pool, connecting, or carrying one exchange.
final class BackendConnection: LoopSocket {
    enum State {
        case connecting(deadline: Int64)
        case active
        case idle(since: Int64)
    }

    let backend: Int
    var state: State
    var parser: HTTPResponseParser
    var exchange: Exchange?
    /// It served a request before the current one (came from the pool).
    var reused = false
    /// The backend closed (or reset) its side; what it sent is still parsed.
    var eof = false
    /// A read returned 0: the backend's FIN came.
    var finReceived = false
    /// A read or write failed with ECONNRESET (a reset while the connection was open).
    var resetWithoutFIN = false
    /// A write failed with EPIPE (a reset after the backend's FIN).
    var resetAfterFIN = false
    /// Bytes received for the current exchange.
    var bytesReceived = 0
    var lastRead: Int64
    var lastWrite: Int64

    init(fd: Int32, id: UInt64, backend: Int, state: State, maxHeadBytes: Int, now: Int64) {
        self.backend = backend
        self.state = state
        parser = HTTPResponseParser(maxHeadBytes: maxHeadBytes)
        lastRead = now
        lastWrite = now
        super.init(fd: fd, id: id)
    }

    var isActive: Bool { if case .active = state { true } else { false } }
    var isIdle: Bool { if case .idle = state { true } else { false } }

    /// Whether the backend's application provably closed this connection before the bytes of
    /// the current request arrived: then it cannot have read them, and any method may go
    /// elsewhere. Asked before the descriptor is closed, when the connection ended before
    /// a response byte.
    ///
    /// TCP tells: a server that closes an idle keep-alive connection sends a FIN, and that
    /// FIN acknowledges every byte it received; so a FIN that leaves bytes of ours
    /// unacknowledged was sent before they arrived, and the bytes that then reach the
    /// closed socket are answered with a reset, which after a FIN shows as EPIPE. A reset
    /// without a FIN proves nothing: a server that read the request may abort its connection
    /// (SO_LINGER 0) as well as one that had not. (HTTP servers do not half-close a
    /// connection before they have read a request.)
    var closedBeforeRequestArrived: Bool {
        if resetWithoutFIN { return false }
        if resetAfterFIN { return true }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error != 0 { return error == EPIPE }
        guard finReceived else { return false }
        var unacknowledged: Int32 = 0  // bytes written and not acknowledged, sent or not (SIOCOUTQ)
        guard ioctl(fd, UInt(TIOCOUTQ), &unacknowledged) == 0 else { return false }
        return unacknowledged > 0
    }

    /// Notes why a read or write failed (`errno`), for `closedBeforeRequestArrived`.
    func noteFailure(errno code: Int32) {
        if code == ECONNRESET { resetWithoutFIN = true }
        if code == EPIPE { resetAfterFIN = true }
    }
}

/// One request of a client and its response, across retries: what the loop holds for it (the
/// client, the backend connection, the bytes on their way); its decisions are `machine`'s.
final class Exchange {
    unowned let client: ClientConnection
    let method: String
    /// Touched only by the loop's thread, and its methods call nothing back: no two accesses can
    /// overlap, so none is checked at run time (the checks cost ~1,000 instructions a request, 1.5%).
    @exclusivity(unchecked) var machine: ProxyExchangeStateMachine
    /// Request bytes (rewritten head, re-framed body) not yet written to the backend.
    var upstream: OutputBuffer
    var backend: BackendConnection?
    /// In its loop's queue, waiting for a backend slot.
    var isQueued = false

    init(
        client: ClientConnection, head: HTTPRequestHead, headBytes: [UInt8], limits: ProxyExchangeStateMachine.Limits,
        now: Int64
    ) {
        self.client = client
        method = head.method
        machine = ProxyExchangeStateMachine(head: head, headBytes: headBytes, limits: limits, now: now)
        upstream = OutputBuffer(headBytes)
    }
}
