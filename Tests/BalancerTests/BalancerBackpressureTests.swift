#if canImport(Glibc)
import Glibc
#endif
import Balancer
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

/// A backend that answers its first request with `total` body bytes, written in 1 MiB blocks
/// through a small send buffer. A send that makes no progress for 2 s is a *stall*: the balancer
/// is not reading; where it happened is recorded, and the backend keeps trying. It stops when all
/// is written or the connection fails.
private final class StreamingBackend: Sendable {
    let total: Int
    let written = Atomic<Int>(0)
    /// Body bytes written when the first stall happened (-1: none yet).
    let stalledAt = Atomic<Int>(-1)
    let finished = Atomic<Bool>(false)
    let failed = Atomic<Bool>(false)
    var scripted: ScriptedBackend { script.value! }
    var isFinished: Bool { finished.load(ordering: .relaxed) }
    var hasFailed: Bool { failed.load(ordering: .relaxed) }
    private let script = Shared<ScriptedBackend?>(nil)

    init(total: Int) throws {
        self.total = total
        script.value = try ScriptedBackend { [self] conn in
            guard conn.readRequest() != nil else { return }
            var size: Int32 = 64 * 1_024
            setsockopt(conn.fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            Sockets.setSendTimeout(conn.fd, millis: 2_000)
            guard conn.write("HTTP/1.1 200 OK\r\nContent-Length: \(total)\r\n\r\n") else {
                failed.store(true, ordering: .relaxed)
                return
            }
            let block = [UInt8](repeating: 0x5A, count: 1 << 20)
            var offset = 0
            while offset < total {
                let want = min(block.count - offset % block.count, total - offset)
                let n = block.withUnsafeBytes { send(conn.fd, $0.baseAddress! + offset % block.count, want, Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    offset += n
                    written.store(offset, ordering: .relaxed)
                } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    if stalledAt.load(ordering: .relaxed) < 0 { stalledAt.store(offset, ordering: .relaxed) }
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    failed.store(true, ordering: .relaxed)
                    return
                }
            }
            finished.store(true, ordering: .relaxed)
        }
    }
}

/// The largest value in a `/proc/sys/net/ipv4/tcp_[rw]mem` file (the most a socket buffer
/// autotunes to); 32 MiB when unreadable.
private func tcpBufferMax(_ name: String) -> Int {
    guard let f = fopen("/proc/sys/net/ipv4/\(name)", "r") else { return 32 << 20 }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    guard fgets(&line, 256, f) != nil else { return 32 << 20 }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }.max() ?? 32 << 20
}

/// A client connection with a small receive buffer, that sends one GET and reads nothing yet.
private func quietClient(port: Int, target: String) throws -> Int32 {
    let fd = try Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 2_000)
    var size: Int32 = 64 * 1_024
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    _ = Sockets.writeAll(fd, Array("GET \(target) HTTP/1.1\r\nHost: t\r\n\r\n".utf8))
    return fd
}

/// Reads until the peer closes or `expected` bytes came (or `timeoutMillis`); the byte count.
private func drain(_ fd: Int32, expected: Int, timeoutMillis: Int) -> (count: Int, closed: Bool) {
    let deadline = monotonicMillis() + Int64(timeoutMillis)
    var count = 0
    while count < expected {
        switch receiveSome(fd, deadline: deadline) {
        case .bytes(let bytes): count += bytes.count
        case .closed, .pollFailed: return (count, true)
        case .timeout: return (count, false)
        }
    }
    return (count, false)
}

@Suite("Balancer: backpressure and the client write timeout")
struct BalancerBackpressureTests {
    /// A client that reads nothing of a large response: the balancer stops reading the backend
    /// once its buffer towards the client is full (`bufferHighWater`), so the backend's sends
    /// stall long before the whole body is out. What can be in flight is the sockets' buffers
    /// (the kernel's autotuning maxima, read from /proc) plus the balancer's bounded buffers;
    /// the body is twice that. Then the client reads it all: nothing was lost.
    @Test func aClientThatDoesNotReadStopsTheBalancerReadingTheBackend() throws {
        let highWater = 64 * 1_024
        let inFlightBound = tcpBufferMax("tcp_rmem") + tcpBufferMax("tcp_wmem") + 4 * highWater + (1 << 20)
        let total = max(64 << 20, 2 * inFlightBound)
        let backend = try StreamingBackend(total: total)
        defer { backend.scripted.stop() }
        var configuration = testBalancerConfiguration(backends: [backend.scripted.configuration("stream")])
        configuration.bufferHighWater = highWater
        configuration.clientWriteTimeoutMillis = 120_000  // the client's pause is not a write timeout here
        configuration.backendIdleTimeoutMillis = 120_000
        try withBalancer(configuration) { balancer in
            let client = try quietClient(port: balancer.port, target: "/big")
            defer { close(client) }
            // Until the backend stalls (its send took nothing for 2 s) or wrote everything: 60 s at most.
            try #require(
                poll(timeoutMillis: 60_000) {
                    backend.stalledAt.load(ordering: .relaxed) >= 0 || backend.finished.load(ordering: .relaxed)
                }, "the backend neither stalled nor finished")
            let stalledAt = backend.stalledAt.load(ordering: .relaxed)
            #expect(stalledAt >= 0, "the backend wrote all \(total) bytes to a client that read none")
            #expect(stalledAt <= inFlightBound, "\(stalledAt) bytes in flight, bound \(inFlightBound)")
            #expect(!backend.isFinished)

            // The client reads now: the whole response arrives.
            let head = Array("HTTP/1.1 200 OK\r\nContent-Length: \(total)\r\n\r\n".utf8).count
            let (count, _) = drain(client, expected: head + total, timeoutMillis: 120_000)
            #expect(count >= head + total, "\(count) of \(head + total) bytes")
            #expect(poll(timeoutMillis: 10_000) { backend.isFinished })
            #expect(balancer.statistics.clientTimeouts == 0)
        }
    }

    /// A client that never reads its response is disconnected once a write to it made no progress
    /// for `clientWriteTimeoutMillis` (500 ms here), and the backend connection is let go.
    @Test func aClientThatNeverReadsIsDisconnectedAfterTheWriteTimeout() throws {
        let backend = try StreamingBackend(total: 1 << 30)
        defer { backend.scripted.stop() }
        var configuration = testBalancerConfiguration(backends: [backend.scripted.configuration("stream")])
        configuration.clientWriteTimeoutMillis = 500
        configuration.backendIdleTimeoutMillis = 120_000
        configuration.clientIdleTimeoutMillis = 120_000
        try withBalancer(configuration) { balancer in
            let client = try quietClient(port: balancer.port, target: "/big")
            defer { close(client) }
            // 10 s: 20× the 500 ms write timeout (the sweep, a loaded machine).
            #expect(poll(timeoutMillis: 10_000) { balancer.statistics.clientTimeouts == 1 }, "no write timeout")
            // Counted right after the timeout, in the same sweep.
            #expect(poll(timeoutMillis: 5_000) { balancer.statistics.aborted == 1 }, "the response had started: the client is cut off")
            // The backend's connection is closed by the balancer: its send fails.
            #expect(poll(timeoutMillis: 10_000) { backend.scripted.closedConnections.current == 1 })
            #expect(backend.hasFailed)
            // The client gets what was in flight, then the end of the connection, not the whole body.
            let (count, closed) = drain(client, expected: 1 << 30, timeoutMillis: 30_000)
            #expect(closed)
            #expect(count < 1 << 30)
        }
    }
}
