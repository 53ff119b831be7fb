/// Where commands go: a connection of the caller's own (`RedisConnection`),
/// or a server's shared, automatically pipelined connections.
public protocol RedisChannel {
    /// Sends several commands in one round trip; their replies in order (error replies as `.error`).
    func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisValue]
}

extension RedisChannel {
    /// Runs a Lua script by EVALSHA, loading it when Redis does not know it
    /// (NOSCRIPT). With `durability`, `WAIT` follows in the same round trip.
    public func eval(
        _ script: RedisScript, keys: [[UInt8]], args: [[UInt8]], durability: RedisDurability? = nil
    ) throws -> RedisValue {
        let tail = [keys.count.redisBytes] + keys + args
        let wait = durability.map { [$0.waitCommand] } ?? []
        var replies = try pipeline([[Array("EVALSHA".utf8), Array(script.sha1.utf8)] + tail] + wait)
        if case .error(let message) = replies[0], message.hasPrefix("NOSCRIPT") {
            replies = try pipeline([[Array("EVAL".utf8), Array(script.source.utf8)] + tail] + wait)
        }
        let reply = try replies[0].throwingServerError(context: "EVALSHA \(script.name)")
        if let durability { try durability.check(replies[1], after: script.name) }
        return reply
    }

    /// Sends one command, then `WAIT` when `durability` asks for it, in one round trip.
    public func command(_ args: [[UInt8]], durability: RedisDurability?) throws -> RedisValue {
        guard let durability else { return try command(args) }
        let replies = try pipeline([args, durability.waitCommand])
        let reply = try replies[0].throwingServerError(context: String(decoding: args.first ?? [], as: UTF8.self))
        try durability.check(replies[1], after: String(decoding: args.first ?? [], as: UTF8.self))
        return reply
    }

    /// Sends one command and waits for its reply. Error replies are returned as `.error`.
    public func command(_ args: [[UInt8]]) throws -> RedisValue {
        try pipeline([args])[0]
    }
}

/// A server's shared connections as a channel (see `RedisPipeline`).
struct RedisSharedChannel: RedisChannel {
    let pool: RedisNodePool
    /// Send `ASKING` before each command (a cluster's `ASK` redirection to this server).
    let asking: Bool

    func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisValue] {
        try pool.sendShared(commands, asking: asking)
    }
}
