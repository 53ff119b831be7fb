/// Where Redis is and how to talk to it.
public struct RedisConfiguration: Sendable, Equatable {
    /// How the master is found.
    public enum Endpoint: Sendable, Equatable {
        case direct(host: String, port: Int)
        /// Ask these sentinels for the current master of `masterName`.
        case sentinel(sentinels: [SentinelAddress], masterName: String)
        /// A Redis Cluster: any of its nodes tells the slot map (`CLUSTER SLOTS`).
        case cluster(seeds: [RedisNodeAddress])
    }

    /// A sentinel's address.
    public typealias SentinelAddress = RedisNodeAddress

    public var endpoint: Endpoint
    public var username: String?
    public var password: String?
    public var database: Int
    /// Connections kept at most; callers wait (up to the command timeout) when all are busy.
    public var poolSize: Int
    public var connectTimeoutMillis: Int
    /// Longest wait for one reply; the connection is dropped after a timeout.
    public var commandTimeoutMillis: Int
    /// First wait before reconnecting after a failed connect; doubles up to `maxReconnectBackoffMillis`.
    public var reconnectBackoffMillis: Int
    public var maxReconnectBackoffMillis: Int
    /// Replicas that must acknowledge each session write (`WAIT`) before it
    /// counts as done; 0 (the default) is Redis's asynchronous replication.
    public var waitReplicas: Int
    /// The longest `WAIT` for them; less than the command timeout.
    public var waitTimeoutMillis: Int
    /// Shared connections per server that single commands and scripts are
    /// pipelined on (see `RedisPipeline`); 0 sends each on a pooled
    /// connection of its own. Taken from `poolSize`, which keeps at least one
    /// connection for sequences that need one of their own (so a pool of 1 is
    /// not pipelined).
    public var pipelineConnections: Int

    /// The `WAIT` to send after writes, when `waitReplicas` asks for one.
    public var durability: RedisDurability? {
        waitReplicas > 0 ? RedisDurability(replicas: waitReplicas, timeoutMillis: waitTimeoutMillis) : nil
    }

    public init(
        endpoint: Endpoint = .direct(host: "127.0.0.1", port: 6379), username: String? = nil, password: String? = nil,
        database: Int = 0, poolSize: Int = 16, connectTimeoutMillis: Int = 1000, commandTimeoutMillis: Int = 1000,
        reconnectBackoffMillis: Int = 50, maxReconnectBackoffMillis: Int = 1000, waitReplicas: Int = 0,
        waitTimeoutMillis: Int = 500, pipelineConnections: Int = 2
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.poolSize = poolSize
        self.connectTimeoutMillis = connectTimeoutMillis
        self.commandTimeoutMillis = commandTimeoutMillis
        self.reconnectBackoffMillis = reconnectBackoffMillis
        self.maxReconnectBackoffMillis = maxReconnectBackoffMillis
        self.waitReplicas = waitReplicas
        self.waitTimeoutMillis = waitTimeoutMillis
        self.pipelineConnections = pipelineConnections
    }

    /// The settings a node's command line gives, validated, with errors that
    /// name the option: `--redis` (a URL) or `--redis-cluster` (seeds),
    /// `--redis-sentinel` (host:port,...) with `--redis-master`,
    /// `--redis-pool-size` (1...1024), `--redis-timeout-ms` (10...60000, for
    /// connects and commands) and `--redis-wait-replicas` (0...16; WAIT then
    /// ends at half the command timeout).
    public static func fromCommandLine(
        url: String, clusterSeeds: String? = nil, sentinels: String? = nil, masterName: String = "mymaster",
        poolSize: Int, timeoutMillis: Int, waitReplicas: Int = 0
    ) throws(RedisError) -> RedisConfiguration {
        guard clusterSeeds == nil || sentinels == nil else {
            throw RedisError(
                .configuration, "--redis-cluster and --redis-sentinel exclude each other (a cluster fails over by itself)")
        }
        var configuration: RedisConfiguration
        do {
            configuration = try clusterSeeds.map(RedisConfiguration.init(clusterSeeds:)) ?? RedisConfiguration(url: url)
            if let sentinels {
                configuration.endpoint = .sentinel(sentinels: try Self.sentinels(sentinels), masterName: masterName)
            }
        } catch let error as RedisError {
            throw error
        } catch {
            throw RedisError(.configuration, "\(error)")
        }
        guard (1...1024).contains(poolSize) else { throw RedisError(.configuration, "--redis-pool-size must be 1...1024") }
        guard (10...60_000).contains(timeoutMillis) else {
            throw RedisError(.configuration, "--redis-timeout-ms must be 10...60000")
        }
        guard (0...16).contains(waitReplicas) else { throw RedisError(.configuration, "--redis-wait-replicas must be 0...16") }
        configuration.poolSize = poolSize
        configuration.connectTimeoutMillis = timeoutMillis
        configuration.commandTimeoutMillis = timeoutMillis
        configuration.waitReplicas = waitReplicas
        configuration.waitTimeoutMillis = max(5, timeoutMillis / 2)  // WAIT ends well before the command times out
        return configuration
    }

    /// A Redis Cluster from its seeds: `host:port,host:port`, or
    /// `redis://[[user]:password@]host:port,host:port` with credentials (a
    /// cluster has database 0 only).
    public init(clusterSeeds text: String) throws {
        var hosts = text
        if text.hasPrefix("redis://") {
            let parsed = try RedisConfiguration(url: text.replacingFirstComma())
            guard parsed.database == 0 else {
                throw RedisError(.configuration, "a Redis Cluster has database 0 only (got /\(parsed.database))")
            }
            self = parsed
            hosts = String(text.dropFirst("redis://".count))
            if let at = hosts.lastIndex(of: "@") { hosts = String(hosts[hosts.index(after: at)...]) }
            if let slash = hosts.firstIndex(of: "/") { hosts = String(hosts[..<slash]) }
        } else {
            self.init()
        }
        let seeds = try hosts.split(separator: ",").map { part -> RedisNodeAddress in
            let (host, port) = try Self.hostAndPort(String(part).trimmingSpaces, defaultPort: 6379)
            return RedisNodeAddress(host: host, port: port)
        }
        guard !seeds.isEmpty else { throw RedisError(.configuration, "no Redis Cluster seeds in '\(text)'") }
        endpoint = .cluster(seeds: seeds)
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]`.
    public init(url: String) throws {
        self.init()
        guard url.hasPrefix("redis://") else {
            throw RedisError(.configuration, "Redis URL must start with redis:// (got '\(url)')")
        }
        var rest = Substring(url.dropFirst("redis://".count))
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = credentials[..<colon]
                username = user.isEmpty ? nil : try Self.percentDecoded(user)
                password = try Self.percentDecoded(credentials[credentials.index(after: colon)...])
            } else {
                password = try Self.percentDecoded(credentials)
            }
        }
        var hostPort = rest
        if let slash = rest.firstIndex(of: "/") {
            hostPort = rest[..<slash]
            let db = rest[rest.index(after: slash)...]
            if !db.isEmpty {
                guard let n = Int(db), n >= 0 else { throw RedisError(.configuration, "bad database '\(db)' in Redis URL") }
                database = n
            }
        }
        let (host, port) = try Self.hostAndPort(String(hostPort), defaultPort: 6379)
        endpoint = .direct(host: host, port: port)
    }

    /// Parses `host:port` (IPv6 in brackets); a missing port is `defaultPort`.
    public static func hostAndPort(_ text: String, defaultPort: Int) throws -> (String, Int) {
        var host = Substring(text)
        var port = defaultPort
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw RedisError(.configuration, "bad address '\(text)'") }
            let after = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()) else {
                    throw RedisError(.configuration, "bad port in '\(text)'")
                }
                port = p
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]) else {
                throw RedisError(.configuration, "bad port in '\(text)'")
            }
            port = p
            host = host[..<colon]
        }
        guard !host.isEmpty else { throw RedisError(.configuration, "missing host in '\(text)'") }
        guard (1...65535).contains(port) else { throw RedisError(.configuration, "port out of range in '\(text)'") }
        return (host == "localhost" ? "127.0.0.1" : String(host), port)
    }

    /// Parses a comma-separated sentinel list: `host:port,host:port`.
    public static func sentinels(_ text: String) throws -> [SentinelAddress] {
        let list = try text.split(separator: ",").map { part -> SentinelAddress in
            let (host, port) = try hostAndPort(String(part).trimmingSpaces, defaultPort: 26379)
            return SentinelAddress(host: host, port: port)
        }
        guard !list.isEmpty else { throw RedisError(.configuration, "no sentinel addresses in '\(text)'") }
        return list
    }

    private static func percentDecoded(_ s: Substring) throws -> String {
        var out: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == 37 {  // %
                guard it.count >= 2, let hi = hexDigit(it.popFirst()!), let lo = hexDigit(it.popFirst()!) else {
                    throw RedisError(.configuration, "bad percent-encoding in Redis URL credentials")
                }
                out.append(hi << 4 | lo)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexDigit(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: b - 48
        case 65...70: b - 55
        case 97...102: b - 87
        default: nil
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

extension String {
    /// The URL with its host list cut at the first comma (so `init(url:)` parses the credentials and the first seed).
    fileprivate func replacingFirstComma() -> String {
        guard let comma = firstIndex(of: ",") else { return self }
        let tail = self[comma...]
        return String(self[..<comma]) + (tail.firstIndex(of: "/").map { String(tail[$0...]) } ?? "")
    }
}

/// `WAIT` after a write: how many replicas must acknowledge it, and for how long to wait.
public struct RedisDurability: Sendable, Equatable {
    public var replicas: Int
    public var timeoutMillis: Int

    public init(replicas: Int, timeoutMillis: Int) {
        self.replicas = replicas
        self.timeoutMillis = timeoutMillis
    }

    var waitCommand: [[UInt8]] { ["WAIT".redisBytes, replicas.redisBytes, timeoutMillis.redisBytes] }

    /// Throws `.notReplicated` when fewer replicas than asked acknowledged the write.
    func check(_ reply: RedisValue, after command: String) throws {
        guard let acknowledged = reply.int else {
            throw RedisError(.server, "WAIT after \(command): \(reply)")
        }
        guard acknowledged >= replicas else {
            throw RedisError(
                .notReplicated,
                "\(command) reached the primary, but \(acknowledged) of \(replicas) replicas acknowledged it within \(timeoutMillis) ms; it may be lost if the primary fails")
        }
    }
}
