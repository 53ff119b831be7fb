#if canImport(Glibc)
import Glibc
#endif
import ClusterSupervisor
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

/// An echo server on a loopback port: every connection gets back what it sends. Stopped by `stop()`.
private final class EchoServer: Sendable {
    let port: Int
    private let listener: Int32
    private let sockets = Mutex<Set<Int32>>([])

    init() throws {
        listener = try Sockets.listen(host: "127.0.0.1", port: 0)
        port = Sockets.localPort(listener)
        startThread { [self] in
            while true {
                let fd = Sockets.accept(listener)
                guard fd >= 0 else { break }
                sockets.withLock { _ = $0.insert(fd) }
                startThread { [self] in
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while true {
                        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                        guard n > 0, Sockets.writeAll(fd, Array(buffer[0..<n])) else { break }
                    }
                    sockets.withLock { _ = $0.remove(fd) }
                    close(fd)
                }
            }
            close(listener)
        }
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        sockets.withLock { for fd in $0 { shutdown(fd, Int32(SHUT_RDWR)) } }
    }
}

/// Reads what arrives on `fd` within `millis`, as text.
private func read(_ fd: Int32, within millis: Int64) -> String {
    var text = ""
    let deadline = monotonicMillis() + millis
    while case .bytes(let bytes) = receiveSome(fd, deadline: deadline) {
        text += String(decoding: bytes, as: UTF8.self)
        if !text.isEmpty { break }
    }
    return text
}

@Suite struct LinkRelayTests {
    @Test func forwardsBothWaysUntilCutThenHoldsEverythingUntilHealed() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try LinkRelay(targetPort: echo.port)
        defer { relay.stop() }
        let connection = try TestConnection(port: relay.port)
        connection.send("ping")
        #expect(read(connection.fd, within: 5_000) == "ping")

        relay.cut()
        #expect(relay.isCut)
        connection.send("during")
        // Silence, not a reset: nothing comes back, and the connection stays open.
        #expect(read(connection.fd, within: 300) == "")
        // A new connection is accepted but not connected onward while cut.
        let late = try TestConnection(port: relay.port)
        late.send("late")
        #expect(read(late.fd, within: 300) == "")
        #expect(relay.traffic.connections == 1)

        relay.heal()
        #expect(read(connection.fd, within: 5_000) == "during", "what waited flows on, in order")
        #expect(read(late.fd, within: 5_000) == "late")
        #expect(relay.traffic.connections == 2)
        connection.send("after")
        #expect(read(connection.fd, within: 5_000) == "after")
    }

    /// Through a relay to an echo server set up by `configure`: sends `text`, expects it back;
    /// returns the milliseconds it took, the relay and the connection (for more).
    private func echoThroughRelay(
        _ text: String, configure: (LinkRelay) -> Void, _ body: (Int64, LinkRelay, TestConnection) throws -> Void
    ) throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try LinkRelay(targetPort: echo.port)
        defer { relay.stop() }
        configure(relay)
        let connection = try TestConnection(port: relay.port)
        let started = monotonicMillis()
        connection.send(text)
        #expect(read(connection.fd, within: 5_000) == text, "late, not gone")
        try body(monotonicMillis() - started, relay, connection)
    }

    @Test func latencyDelaysEachChunk() throws {
        try echoThroughRelay("slow", configure: { $0.setLatency(millis: 150) }) { millis, _, _ in
            // Both ways go through the relay: at least twice the latency (a lower bound only).
            #expect(millis >= 300)
        }
    }

    @Test func aLostChunkArrivesARetransmissionTimeoutLateAndInOrder() throws {
        try echoThroughRelay("lost", configure: { $0.setLoss(percent: 100) }) { millis, relay, connection in  // every chunk
            #expect(millis >= 2 * Int64(LinkRelay.retransmissionMillis), "held one timeout each way")
            relay.setLoss(percent: 0)
            connection.send("again")
            #expect(read(connection.fd, within: 5_000) == "again")
        }
    }

    @Test func stopClosesItsConnections() throws {
        let echo = try EchoServer()
        defer { echo.stop() }
        let relay = try LinkRelay(targetPort: echo.port)
        let connection = try TestConnection(port: relay.port)
        connection.send("x")
        #expect(read(connection.fd, within: 5_000) == "x")
        relay.stop()
        #expect(receiveSome(connection.fd, deadline: monotonicMillis() + 5_000).isClosed)
        #expect(throws: SocketError.self) { try Sockets.connect(host: "127.0.0.1", port: relay.port, timeoutMillis: 500) }
    }
}

extension Received {
    fileprivate var isClosed: Bool {
        if case .closed = self { return true }
        return false
    }
}
