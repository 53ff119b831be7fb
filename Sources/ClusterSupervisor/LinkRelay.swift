#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import Synchronization
import SystemSupport

/// A TCP relay on a loopback port in front of one network link — a node's
/// connection to a peer, or to its store — that the benchmark and the demo
/// cut and heal as a network partition would, with no network but loopback
/// (Toxiproxy's model, in process).
///
/// Cut, it forwards nothing either way and closes nothing: the bytes already
/// read wait in the relay, the rest in the kernel's buffers (packets dropped,
/// not refused: the ends see silence, not a reset), and a new connection is
/// accepted but not connected onward until the link heals (a SYN that goes
/// unanswered). Healed, what waited flows on in order. `latencyMillis` delays
/// every chunk one way; `lossPercent` holds that share of the chunks a retransmission timeout
/// (`retransmissionMillis`) more — what a lost segment costs a TCP connection, whose bytes still
/// arrive, in order, late.
public final class LinkRelay: Sendable {
    struct State {
        var cut = false
        var latencyMillis = 0
        var lossPercent = 0
        var stopped = false
        /// Every socket of the relay's connections, both ends, to shut at `stop()`.
        var sockets: Set<Int32> = []
        var connections = 0
        var bytesForwarded = 0
    }

    /// The relay's own port on 127.0.0.1: give it to the node instead of the target's.
    public let port: Int
    public let targetHost: String
    public let targetPort: Int
    private let listener: Int32
    /// Its condition is broadcast when the link heals or the relay stops.
    private let state: ConditionLock<State>

    /// Listens on a free loopback port for connections to `targetHost:targetPort`.
    public init(targetHost: String = "127.0.0.1", targetPort: Int) throws {
        listener = try Sockets.listen(host: "127.0.0.1", port: 0)
        port = Sockets.localPort(listener)
        self.targetHost = targetHost
        self.targetPort = targetPort
        state = ConditionLock(State())
        startThread { [self] in acceptLoop() }
    }

    /// Whether the link is cut now.
    public var isCut: Bool { state.withLock { $0.cut } }

    /// Connections relayed so far, and the bytes they carried (both ways).
    public var traffic: (connections: Int, bytes: Int) { state.withLock { ($0.connections, $0.bytesForwarded) } }

    /// Stops forwarding, both ways, until `heal()`.
    public func cut() { state.withLock { $0.cut = true } }

    /// Forwards again; what waited flows on.
    public func heal() {
        state.withLock { s in
            s.cut = false
            state.broadcast()
        }
    }

    /// Delays each chunk by `millis` (0: none), one way, from now on.
    public func setLatency(millis: Int) { state.withLock { $0.latencyMillis = max(0, millis) } }

    /// Linux's shortest TCP retransmission timeout: what a lost segment delays the stream by.
    public static let retransmissionMillis = 200

    /// Holds `percent` of the chunks (0: none, 100: all) `retransmissionMillis` more, from now on.
    public func setLoss(percent: Int) { state.withLock { $0.lossPercent = min(100, max(0, percent)) } }

    /// Closes the listener and every relayed connection; its threads end. Call it once done:
    /// the threads keep the relay alive until then.
    public func stop() {
        // Under the lock: a socket is closed only after it left `sockets`, so these numbers are ours.
        state.withLock { s in
            guard !s.stopped else { return }
            s.stopped = true
            state.broadcast()
            shutdown(listener, Int32(SHUT_RDWR))  // the accept loop closes it
            for fd in s.sockets { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    // MARK: The threads

    private func acceptLoop() {
        while true {
            let client = Sockets.accept(listener)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                break  // stop() shut the listener
            }
            guard track(client) else {
                close(client)
                break
            }
            startThread { [self] in connect(client) }
        }
        close(listener)
    }

    /// Waits until the link is not cut, connects onward, then pumps both ways.
    private func connect(_ client: Int32) {
        guard waitUntilOpen(), let upstream = try? Sockets.connect(host: targetHost, port: targetPort, timeoutMillis: 2_000),
            track(upstream)
        else {
            untrackAndClose(client)
            return
        }
        state.withLock { $0.connections += 1 }
        let done = Atomic<Int>(0)
        let finish: @Sendable () -> Void = { [self] in
            // The second pump to end closes both sockets (the first only ended its direction).
            if done.add(1, ordering: .acquiringAndReleasing).newValue == 2 {
                untrackAndClose(client)
                untrackAndClose(upstream)
            }
        }
        startThread { [self] in
            pump(from: upstream, to: client)
            finish()
        }
        pump(from: client, to: upstream)
        finish()
    }

    /// Copies `from` to `to` until either end closes, holding each chunk while the link is cut.
    private func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            guard waitUntilOpen() else { break }
            let (latency, loss) = state.withLock { ($0.latencyMillis, $0.lossPercent) }
            let lost = loss > 0 && Int.random(in: 0..<100) < loss
            let delay = latency + (lost ? Self.retransmissionMillis : 0)
            if delay > 0 { usleep(UInt32(min(delay, 60_000)) * 1_000) }
            guard waitUntilOpen(), Sockets.writeAll(to, Array(buffer[0..<n])) else { break }
            state.withLock { $0.bytesForwarded += n }
        }
        shutdown(to, Int32(SHUT_WR))  // pass the end on, like the network would
    }

    /// Blocks while the link is cut; false once the relay stops.
    private func waitUntilOpen() -> Bool {
        state.wait(until: .max, for: { $0.stopped || !$0.cut }, then: { s, _ in !s.stopped })
    }

    private func track(_ fd: Int32) -> Bool {
        state.withLock { s in
            guard !s.stopped else { return false }
            s.sockets.insert(fd)
            return true
        }
    }

    private func untrackAndClose(_ fd: Int32) {
        state.withLock { _ = $0.sockets.remove(fd) }
        close(fd)
    }
}
