import CHiredis

#if canImport(Glibc)
import Glibc
#endif

/// One hiredis connection. Used by one thread at a time: the pool hands it
/// out exclusively. Any I/O error or timeout leaves it broken; the pool then
/// drops it.
public final class RedisConnection: RedisChannel, @unchecked Sendable {
    private var context: UnsafeMutablePointer<redisContext>?
    public let host: String
    public let port: Int
    /// Set once an error made the connection unusable.
    public private(set) var isBroken = false
    /// Sends `ASKING` before each command (a Redis Cluster `ASK` redirection to this node).
    var asking = false

    /// Connects, then authenticates and selects the database as configured.
    init(host: String, port: Int, configuration: RedisConfiguration, selectDatabase: Bool = true) throws {
        self.host = host
        self.port = port
        let connectTimeout = Self.timeval(millis: configuration.connectTimeoutMillis)
        guard let context = redisConnectWithTimeout(host, Int32(port), connectTimeout) else {
            throw RedisError(.connection, "cannot allocate a hiredis context")
        }
        self.context = context
        if context.pointee.err != 0 {
            let message = Self.errorText(context)
            redisFree(context)
            self.context = nil
            throw RedisError(.connection, "connect to \(host):\(port): \(message)")
        }
        // hiredis 0.14 opens its socket without close-on-exec; a process spawned later must not inherit it.
        _ = fcntl(context.pointee.fd, F_SETFD, FD_CLOEXEC)
        redisSetTimeout(context, Self.timeval(millis: configuration.commandTimeoutMillis))
        _ = redisEnableKeepAlive(context)
        if selectDatabase {
            if let password = configuration.password {
                var args: [[UInt8]] = [Array("AUTH".utf8)]
                if let user = configuration.username { args.append(Array(user.utf8)) }
                args.append(Array(password.utf8))
                try command(args).throwingServerError(context: "AUTH")
            }
            if configuration.database != 0 {
                try command(["SELECT".redisBytes, configuration.database.redisBytes]).throwingServerError(context: "SELECT")
            }
        }
    }

    deinit { if let context { redisFree(context) } }

    /// Marks the connection unusable (the pool drops it).
    func markBroken() { isBroken = true }

    static func timeval(millis: Int) -> Glibc.timeval {
        Glibc.timeval(tv_sec: millis / 1000, tv_usec: (millis % 1000) * 1000)
    }

    private static func errorText(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// The error for a failed hiredis call; marks the connection broken.
    private func ioError() -> RedisError {
        isBroken = true
        guard let context else { return RedisError(.connection, "connection closed") }
        let message = Self.errorText(context)
        // hiredis keeps strerror(errno) of the failed read in errstr: read that, not errno, which may have moved on.
        if context.pointee.err == REDIS_ERR_IO
            && (message.contains("temporarily unavailable") || message.contains("timed out"))
        {
            return RedisError(.timeout, "no reply from \(host):\(port) within the command timeout")
        }
        if context.pointee.err == REDIS_ERR_EOF {
            return RedisError(.connection, "\(host):\(port) closed the connection")
        }
        return RedisError(.connection, "\(host):\(port): \(message.isEmpty ? "I/O error" : message)")
    }

    /// The server's `CLIENT ID` of this connection: `CLIENT LIST ID` on any
    /// connection shows whether it is still open.
    public func clientID() throws -> Int64 {
        guard let id = try command(["CLIENT".redisBytes, "ID".redisBytes]).throwingServerError(context: "CLIENT ID").int
        else { throw RedisError(.protocolViolation, "CLIENT ID: not an integer reply") }
        return id
    }

    /// Sends several commands (then `WAIT`, with `durability`) in one write
    /// and reads their replies in order.
    public func pipeline(_ commands: [[[UInt8]]], durability: RedisDurability?) throws -> (replies: [RedisValue], waited: RedisValue?) {
        guard let durability else { return (try pipeline(commands), nil) }
        var replies = try pipeline(commands + [durability.waitCommand])
        let waited = replies.removeLast()
        return (replies, waited)
    }

    /// Sends several commands in one write and reads their replies in order.
    public func pipeline(_ commands: [[[UInt8]]]) throws -> [RedisValue] {
        guard let context, !isBroken else { throw RedisError(.connection, "connection is broken") }
        let sent = asking ? commands.flatMap { [[Array("ASKING".utf8)], $0] } : commands
        for args in sent {
            let rc = Self.withArgv(args) { argc, argv, lengths in
                redisAppendCommandArgv(context, argc, argv, lengths)
            }
            if rc != REDIS_OK { throw ioError() }
        }
        var replies: [RedisValue] = []
        replies.reserveCapacity(sent.count)
        for _ in sent {
            var raw: UnsafeMutableRawPointer? = nil
            if redisGetReply(context, &raw) != REDIS_OK || raw == nil { throw ioError() }
            let reply = raw!.assumingMemoryBound(to: redisReply.self)
            defer { freeReplyObject(raw) }
            replies.append(try Self.convert(reply))
        }
        // ASKING's own replies are OK (or an error the command's reply repeats).
        return asking ? stride(from: 1, to: replies.count, by: 2).map { replies[$0] } : replies
    }

    private static func withArgv<R>(
        _ args: [[UInt8]], _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R
    ) -> R {
        // One flat buffer; argv points into it.
        var flat: [UInt8] = []
        flat.reserveCapacity(args.reduce(0) { $0 + $1.count } + 1)
        var offsets: [Int] = []
        for arg in args {
            offsets.append(flat.count)
            flat.append(contentsOf: arg)
        }
        flat.append(0)
        let lengths = args.map(\.count)
        return flat.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            var argv: [UnsafePointer<CChar>?] = offsets.map { base + $0 }
            return argv.withUnsafeMutableBufferPointer { argvBuffer in
                lengths.withUnsafeBufferPointer { body(Int32(args.count), argvBuffer.baseAddress!, $0.baseAddress!) }
            }
        }
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) throws -> RedisValue {
        let r = reply.pointee
        func text() -> [UInt8] {
            guard let str = r.str, r.len > 0 else { return [] }
            return Array(UnsafeRawBufferPointer(start: str, count: r.len))
        }
        switch r.type {
        case REDIS_REPLY_STRING: return .bulk(text())
        case REDIS_REPLY_STATUS: return .status(String(decoding: text(), as: UTF8.self))
        case REDIS_REPLY_INTEGER: return .integer(Int64(r.integer))
        case REDIS_REPLY_NIL: return .null
        case REDIS_REPLY_ERROR: return .error(String(decoding: text(), as: UTF8.self))
        case REDIS_REPLY_ARRAY:
            var items: [RedisValue] = []
            items.reserveCapacity(r.elements)
            for i in 0..<r.elements {
                guard let element = r.element[i] else { items.append(.null); continue }
                items.append(try convert(element))
            }
            return .array(items)
        default:
            throw RedisError(.protocolViolation, "unknown reply type \(r.type)")
        }
    }
}

extension RedisValue {
    /// Throws `RedisError(.server)` for an error reply; returns the value otherwise.
    @discardableResult
    public func throwingServerError(context: String) throws -> RedisValue {
        if case .error(let message) = self { throw RedisError(.server, "\(context): \(message)") }
        return self
    }
}
