#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Histogram
import Logging
import MiniHTTP
import SessionCore
import SessionReplication
import Synchronization
import SystemSupport

/// The replicate strategy's numbers: replication lag in-process, requests/s
/// round robin through running nodes, and helpers for the restart-to-ready
/// measurement that scripts/bench-replication.sh orchestrates. The CLI's
/// `bench-replication` sets these and calls one method per measurement; each
/// prints a JSON line (for scripts) and a line for people.
public struct ReplicationBench: Sendable {
    /// Lag: measured writes.
    public var samples = 20_000
    /// Lag: unmeasured writes first.
    public var warmupSamples = 2_000
    /// Lag: one write every this many microseconds at most.
    public var intervalMicros = 100
    /// Lag: replication nodes in the process (2 or 3).
    public var lagNodes = 3
    /// Throughput: the warm-up and the measured window.
    public var window = BenchWindow()
    /// Throughput: simulated users (one thread each); populate: connections.
    public var connections = 32
    /// Populate: sessions to create.
    public var sessions = 10_000
    /// Populate: POSTs in all for the first session (the sample).
    public var samplePosts = 5
    /// Wait-ready: count from this instant (µs since 1970), else from the call.
    public var sinceEpochMicros: Int64?
    /// Wait-ready: give up after this many seconds.
    public var timeout: Double = 60

    public init() {}

    /// Throws when a setting is out of range (the messages name the CLI's options).
    public func validate() throws(BenchFailure) {
        try window.validate()
        try checkRange(samples, 1...10_000_000, "--samples")
        try checkRange(warmupSamples, 0...10_000_000, "--warmup-samples")
        try checkRange(intervalMicros, 0...1_000_000, "--interval-us")
        try checkRange(lagNodes, 2...3, "--lag-nodes")
        try checkRange(connections, 1...4096, "--connections")
        try checkRange(sessions, 1...10_000_000, "--sessions")
        try checkRange(samplePosts, 1...1_000_000, "--sample-posts")
        guard timeout > 0, timeout <= 3_600 else { throw BenchFailure("--timeout must be in (0, 3600]") }
    }
}

extension ReplicationBench {
    // MARK: - Lag

    public func measureLag(logger: Logger) throws {
        let secret = Array("bench-replication in-process secret".utf8)
        let names = ["lag-a", "lag-b", "lag-c"].prefix(lagNodes)
        // Peers must be known before the nodes bind: reserve free ports, then let the nodes bind them.
        var replicationNodes: [ReplicationNode] = []
        for attempt in 1...5 {
            let ports = try names.map { _ in try Sockets.freeLoopbackPort() }
            let peers = ports.map { PeerAddress(host: "127.0.0.1", port: $0) }
            do {
                replicationNodes = try zip(names, ports).map { name, port in
                    let configuration = ReplicationConfiguration(
                        nodeName: name, host: "127.0.0.1", port: port, peers: peers, secret: secret, mode: .async)
                    let store = ReplicatedSessionStore(node: configuration.nodeID)
                    return try ReplicationNode(store: store, configuration: configuration, logger: logger)
                }
                break
            } catch {
                for node in replicationNodes { node.shutdown() }
                replicationNodes = []
                if attempt == 5 { throw BenchFailure("cannot bind the in-process nodes: \(error)") }
            }
        }
        let all = replicationNodes
        defer { for node in all { node.shutdown() } }
        for node in all { node.start() }
        let deadline = monotonicNanos() + 10_000_000_000
        while !all.allSatisfy({ $0.isReady && $0.peers.allSatisfy(\.connected) }) {
            guard monotonicNanos() < deadline else {
                throw BenchFailure("the in-process nodes did not connect to each other within 10 s")
            }
            usleep(1_000)
        }
        let a = all[0]
        let b = all[1]
        let others = Array(all.dropFirst())

        // A few sessions in turn; each write increments one of them on A.
        let ids = (0..<64).map { _ in SessionID.generate() }
        var created = Set<Int>()
        var first = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
        var every = first
        var timeouts = 0
        let interval = UInt64(intervalMicros) * 1_000
        let total = warmupSamples + samples
        var nextStart = monotonicNanos()
        var measuredStart = nextStart
        for i in 0..<total {
            if i == warmupSamples { measuredStart = monotonicNanos() }
            // Pace: sleep most of the gap, yield the rest.
            while true {
                let now = monotonicNanos()
                if now >= nextStart { break }
                if nextStart - now > 200_000 { usleep(UInt32((nextStart - now - 100_000) / 1_000)) } else { sched_yield() }
            }
            let slot = i % ids.count
            let id = ids[slot]
            let delta = SessionDelta(
                id: id, changes: [.increment("count", by: 1)], createIfMissing: !created.contains(slot))
            let began = monotonicNanos()
            nextStart = began + interval
            guard let applied = try a.store.apply(delta) else {
                throw BenchFailure("apply on node A returned nil for sample \(i)")
            }
            created.insert(slot)
            // Spin (yielding the CPU: this machine may have few cores) until B, then every peer, has it.
            var firstNanos: UInt64?
            var pending = others
            let giveUp = began + 1_000_000_000
            while !pending.isEmpty {
                pending.removeAll { ($0.store.fullState(of: id)?.state.version.packedVersion ?? 0) >= applied.version }
                let now = monotonicNanos()
                if firstNanos == nil, !pending.contains(where: { $0 === b }) { firstNanos = now - began }
                if pending.isEmpty {
                    if i >= warmupSamples {
                        first.record(firstNanos ?? now - began)
                        every.record(now - began)
                    }
                    break
                }
                if now >= giveUp {
                    if i >= warmupSamples { timeouts += 1 }
                    break
                }
                sched_yield()
            }
        }
        let seconds = Double(monotonicNanos() - measuredStart) / 1e9
        let counters = a.counters
        let receivedByPeers = others.map(\.counters.itemsReceived).reduce(0, +)
        func us(_ h: Histogram<UInt64>, _ p: Double) -> String {
            h.totalCount == 0 ? "null" : fixed(Double(h.valueAtPercentile(p)) / 1_000, 1)
        }
        func maxUs(_ h: Histogram<UInt64>) -> String {
            h.totalCount == 0 ? "null" : fixed(Double(h.max) / 1_000, 1)
        }
        print(
            "{\"measurement\":\"lag\",\"p50_us\":\(us(first, 50)),\"p90_us\":\(us(first, 90)),"
                + "\"p99_us\":\(us(first, 99)),\"p999_us\":\(us(first, 99.9)),\"max_us\":\(maxUs(first)),"
                + "\"all_p50_us\":\(us(every, 50)),\"all_p99_us\":\(us(every, 99)),"
                + "\"all_p999_us\":\(us(every, 99.9)),\"all_max_us\":\(maxUs(every)),"
                + "\"samples\":\(first.totalCount),\"timeouts\":\(timeouts),\"nodes\":\(lagNodes),"
                + "\"interval_us\":\(intervalMicros),\"seconds\":\(fixed(seconds, 3)),"
                + "\"items_sent\":\(counters.itemsSent),\"items_received_by_peers\":\(receivedByPeers),"
                + "\"queue_overflows\":\(counters.queueOverflows),\"resyncs\":\(counters.resyncs)}")
        print(
            "lag (in-process, \(lagNodes) ReplicationNodes over loopback TCP on 127.0.0.1, async mode, "
                + "\(first.totalCount) writes, one per \(intervalMicros) us at most): write on A until visible on B: "
                + "p50 \(us(first, 50)) us, p99 \(us(first, 99)) us, p99.9 \(us(first, 99.9)) us, max \(maxUs(first)) us"
                + (lagNodes > 2
                    ? "; until visible on every peer: p50 \(us(every, 50)) us, p99 \(us(every, 99)) us, "
                        + "p99.9 \(us(every, 99.9)) us, max \(maxUs(every)) us" : "")
                + "; \(timeouts) not visible within 1 s")
        fflush(nil)
    }
}
