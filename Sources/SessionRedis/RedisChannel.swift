/// Where commands go: a connection of the caller's own (`RedisConnection`),
/// or a server's shared, automatically pipelined connections.
public protocol RedisChannel {
    /// Sends several commands in one round trip; their replies in order
    /// (error replies as `.error`). With `durability`, a `WAIT` follows
    /// them (on a shared connection, one `WAIT` after a whole batch: it
    /// covers every write sent before it), and its reply is returned too.
    func pipeline(_ commands: [[[UInt8]]], durability: RedisDurability?) throws -> (replies: [RedisValue], waited: RedisValue?)
}

extension RedisChannel {
    /// Sends several commands in one round trip; their replies in order (error replies as `.error`).
    public func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisValue] {
        try pipeline(commands, durability: nil).replies
    }

    /// Runs a Lua script by EVALSHA, loading it when Redis does not know it
    /// (NOSCRIPT). With `durability`, `WAIT` follows in the same round trip.
    public func eval(
        _ script: RedisScript, keys: [[UInt8]], args: [[UInt8]], durability: RedisDurability? = nil
    ) throws -> RedisValue {
        let tail = [keys.count.redisBytes] + keys + args
        var sent = try pipeline([[Array("EVALSHA".utf8), Array(script.sha1.utf8)] + tail], durability: durability)
        if case .error(let message) = sent.replies[0], message.hasPrefix("NOSCRIPT") {
            sent = try pipeline([[Array("EVAL".utf8), Array(script.source.utf8)] + tail], durability: durability)
        }
        let reply = try sent.replies[0].throwingServerError(context: "EVALSHA \(script.name)")
        if let durability { try durability.check(sent.waited ?? .null, after: script.name) }
        return reply
    }

    /// Sends one command, then `WAIT` when `durability` asks for it, in one round trip.
    public func command(_ args: [[UInt8]], durability: RedisDurability?) throws -> RedisValue {
        let name = String(decoding: args.first ?? [], as: UTF8.self)
        let sent = try pipeline([args], durability: durability)
        let reply = try sent.replies[0].throwingServerError(context: name)
        if let durability { try durability.check(sent.waited ?? .null, after: name) }
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

    func pipeline(_ commands: [[[UInt8]]], durability: RedisDurability?) throws -> (replies: [RedisValue], waited: RedisValue?) {
        try pool.sendShared(commands, asking: asking, durability: durability)
    }
}
