import Foundation
import Logging
import SessionCore
@testable import SessionRedis

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
