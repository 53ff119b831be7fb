import Foundation
import Logging
import SessionCore
@testable import SessionRedis
import Synchronization
import SystemSupport
import TestSupport

/// Raw commands to one cluster node, for tests that look under the client (roles, slots, migrations).
struct ClusterNodeConnection {
    let address: RedisNodeAddress
    private let connection: RedisConnection

    init(_ address: RedisNodeAddress) throws {
        self.address = address
        connection = try RedisConnection(
            host: address.host, port: address.port, configuration: RedisConfiguration(commandTimeoutMillis: 10_000))
    }

    @discardableResult
    func send(_ args: any RedisArgument...) throws -> RedisValue {
        try send(args.map(\.redisBytes))
    }

    @discardableResult
    func send(_ args: [[UInt8]]) throws -> RedisValue {
        try connection.command(args).throwingServerError(context: "\(address)")
    }

    /// This node's cluster ID (`CLUSTER MYID`).
    func nodeID() throws -> String {
        guard let id = try send("CLUSTER", "MYID").string else { throw RedisError(.protocolViolation, "CLUSTER MYID") }
        return id
    }

    /// The primaries and the slot ranges they own, from `CLUSTER SLOTS`.
    func slotMap() throws -> RedisSlotMap {
        try RedisSlotMap(clusterSlots: send("CLUSTER", "SLOTS"), askedHost: address.host)
    }
}

/// Moves `slots` from one primary to another as `redis-cli --cluster reshard`
/// does, slot by slot: IMPORTING on the target, MIGRATING on the source,
/// MIGRATE of the slot's keys in batches, then SETSLOT NODE on both (and on
/// the other primaries). Clients meet ASK while a slot moves and MOVED after.
func migrate(slots: [Int], from source: ClusterNodeConnection, to target: ClusterNodeConnection, others: [ClusterNodeConnection]) throws {
    let sourceID = try source.nodeID()
    let targetID = try target.nodeID()
    for slot in slots {
        try target.send("CLUSTER", "SETSLOT", slot, "IMPORTING", sourceID)
        try source.send("CLUSTER", "SETSLOT", slot, "MIGRATING", targetID)
        while true {
            guard let keys = try source.send("CLUSTER", "GETKEYSINSLOT", slot, 100).array, !keys.isEmpty else { break }
            try source.send(
                ["MIGRATE".redisBytes, target.address.host.redisBytes, target.address.port.redisBytes, "".redisBytes,
                 "0".redisBytes, "5000".redisBytes, "REPLACE".redisBytes, "KEYS".redisBytes]
                    + keys.compactMap(\.bytes))
        }
        for node in [target, source] + others { try node.send("CLUSTER", "SETSLOT", slot, "NODE", targetID) }
    }
}

/// Threads that increment the counter `n` of `sessions` (each thread its own
/// stride over them) until stopped, counting what was acknowledged and what failed.
final class IncrementWriters: Sendable {
    let sessions: [SessionID]
    private final class Tally: Sendable {
        let acknowledged = Mutex([SessionID: Int64]())
        let failures = Mutex<[String]>([])
        let lastFailure = Mutex<Date?>(nil)
        let stopping = Atomic<Bool>(false)
    }
    private let tally = Tally()
    private let group: DispatchGroup

    /// Creates each session with `n` = 0, then starts `threads` writers.
    init(threads: Int, store: RedisSessionStore, sessions: [SessionID]) throws {
        self.sessions = sessions
        for id in sessions { _ = try store.apply(SessionDelta(id: id, changes: [.set("n", [0x30])], createIfMissing: true)) }
        let tally = tally
        group = startThreads(threads) { thread in
            var i = thread
            while !tally.stopping.load(ordering: .relaxed) {
                let id = sessions[i % sessions.count]
                i += threads
                let failure: String?
                do {
                    let applied = try store.apply(SessionDelta(id: id, changes: [.increment("n", by: 1)]))
                    failure = applied == nil ? "session \(id) missing" : nil
                } catch {
                    failure = "\(error)"
                }
                if let failure {
                    tally.failures.withLock { $0.append(failure) }
                    tally.lastFailure.withLock { $0 = Date() }
                } else {
                    tally.acknowledged.withLock { $0[id, default: 0] += 1 }
                }
            }
        }
    }

    /// Acknowledged increments per session.
    var acknowledged: [SessionID: Int64] { tally.acknowledged.withLock { $0 } }
    /// Failed increments (their outcome is unknown).
    var failures: [String] { tally.failures.withLock { $0 } }
    /// When the last increment failed.
    var lastFailure: Date? { tally.lastFailure.withLock { $0 } }
    /// Acknowledged increments in all.
    var total: Int64 { acknowledged.values.reduce(0, +) }

    /// Stops the writers; false when they did not stop within `seconds`.
    func stop(seconds: Double = 30) -> Bool {
        tally.stopping.store(true, ordering: .relaxed)
        return group.wait(timeout: .now() + seconds) == .success
    }

    /// Acknowledged increments missing from each session's stored counter, summed.
    func lost(in store: RedisSessionStore) throws -> Int64 {
        let counts = acknowledged
        var lost: Int64 = 0
        for id in sessions {
            guard let snapshot = try store.load(id) else { throw RedisError(.protocolViolation, "session \(id) lost") }
            let stored = snapshot.attributes["n"].flatMap { Int64(String(decoding: $0, as: UTF8.self)) } ?? 0
            lost += max(0, counts[id, default: 0] - stored)
        }
        return lost
    }
}
