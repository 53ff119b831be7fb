import Logging
import SessionCore
import Synchronization
import SystemSupport

/// Sessions in Redis (the Spring Session / connect-redis model): nodes keep
/// nothing, so any node can serve any request, and a node that dies loses no
/// session.
///
/// One hash per session under `<prefix>{<tag>}:<id>`, the hash tag being the
/// ID's `slotTag` (its first three characters): attributes as fields
/// `attr:<name>` holding JSON (readable with `redis-cli HGETALL`), metadata
/// as `meta:created`, `meta:access`, `meta:version` and `meta:bytes` (ms
/// since 1970 on Redis's clock). Every write is one Lua script, so it is
/// all-or-nothing; the key's TTL is min(idle, absolute remaining), so Redis
/// itself expires sessions.
///
/// Made for Redis Cluster: every key one request touches shares the tag, so
/// every script runs in one slot — the session, its idempotency records
/// (`<prefix>{<tag>}:idem:<storage key>`, the tag from the storage key), a
/// regenerated ID (which keeps the tag, so `RENAME` stays in the slot), and
/// a session created by a request with an `Idempotency-Key` (its ID takes
/// the record's tag). 262,144 random tags spread sessions evenly over the
/// 16,384 slots. `waitReplicas` in the client's configuration makes every
/// write wait (`WAIT`) for that many replicas.
///
/// A write that times out has an unknown outcome (the script may have run):
/// it is reported as `unavailable`. A retry with the same `Idempotency-Key`
/// is still safe — the record is written by the same script, so the retry
/// either finds it and replays, or runs for the first time.
public final class RedisSessionStore: SessionStore, IdempotencyStore, PrincipalIndexedStore, SessionEventSource {
    public let expiry: SessionExpiry
    public let client: RedisClient
    public let keyPrefix: String
    /// At most this many bytes of attribute names and values per session.
    public let maxSessionBytes: Int
    /// The cap on sessions per principal, nil for none.
    public let principalLimit: PrincipalSessionLimit?
    /// This node's name, written as `meta:node` by every write and touch (listings show it).
    public let nodeName: String?
    /// Where this store's session events go (set `events.current`; expiries need `startExpirySweeper`).
    public let events: SessionEventHub
    let expirySweeper = RepeatingTimer()
    let sweepIntervalMillis = Atomic<Int>(30_000)
    let logger: Logger

    public init(
        client: RedisClient, expiry: SessionExpiry = SessionExpiry(), keyPrefix: String = "sess:",
        maxSessionBytes: Int = 64 * 1024, principalLimit: PrincipalSessionLimit? = nil, nodeName: String? = nil,
        logger: Logger
    ) {
        self.client = client
        self.expiry = expiry
        self.keyPrefix = keyPrefix
        self.maxSessionBytes = maxSessionBytes
        self.principalLimit = principalLimit
        self.nodeName = nodeName
        events = SessionEventHub(node: nodeName)
        self.logger = logger
    }

    deinit { expirySweeper.stop() }

    /// The Redis key of a session: `<prefix>{<slot tag>}:<id>`.
    public func key(for id: SessionID) -> [UInt8] { Array("\(keyPrefix){\(id.slotTag)}:\(id.rawValue)".utf8) }

    /// The principal index of the sessions with this slot tag: a sorted set
    /// `<prefix>{<slot tag>}:principals` of `<principal>\n<session ID>`, each
    /// scored with the session's expiry time. Every script that writes or
    /// touches a session keeps its entry, and the set's TTL, in the same step.
    public func principalIndexKey(slotTag: String) -> [UInt8] { Array("\(keyPrefix){\(slotTag)}:principals".utf8) }

    /// `nodeName` as a script argument ("" for none).
    var nodeArgument: [UInt8] { Array((nodeName ?? "").utf8) }

    /// The Redis key of an idempotency record: `<prefix>{<slot tag>}:idem:<key>`,
    /// in the slot of the session it belongs to (`IdempotencyScope.slotTag(ofStorageKey:)`);
    /// a key of another shape is its own hash tag.
    public func idempotencyKey(_ key: String) -> [UInt8] {
        if let tag = IdempotencyScope.slotTag(ofStorageKey: key) { return Array("\(keyPrefix){\(tag)}:idem:\(key)".utf8) }
        return Array("\(keyPrefix)idem:{\(key)}".utf8)
    }

    /// What `WAIT`s after each write (`RedisConfiguration.waitReplicas`).
    private var durability: RedisDurability? { client.configuration.durability }

    var timeArguments: [[UInt8]] {
        [expiry.idleTimeoutMillis.redisBytes, (expiry.absoluteTimeoutMillis ?? 0).redisBytes]
    }

    /// A plain `HGETALL`: the key's TTL is min(idle, absolute remaining), so
    /// a key that exists is live. The idle timer is refreshed by a small
    /// script only when due (once per tenth of the idle timeout), as
    /// measured: a script on every read cost Redis 4 times the CPU of the read.
    public func load(_ id: SessionID) throws -> SessionSnapshot? {
        let key = key(for: id)
        var reply = try redis { try client.send(["HGETALL".redisBytes, key]) }
        if case .array(let fields) = reply, let access = Self.metaValue("meta:access", in: fields),
            SessionClock.system.nowMillis() - access >= expiry.touchIntervalMillis
        {
            reply = try run(
                Self.loadScript, keys: [key, principalIndexKey(slotTag: id.slotTag)],
                args: timeArguments + [expiry.touchIntervalMillis.redisBytes, id.rawValue.redisBytes, nodeArgument])
        }
        guard case .array(let fields) = reply, fields.count % 2 == 0, !fields.isEmpty else { return nil }
        var attributes: [String: [UInt8]] = [:]
        var created: Int64 = 0
        var access: Int64 = 0
        var version: UInt64 = 0
        for pair in stride(from: 0, to: fields.count, by: 2) {
            guard let name = fields[pair].string, let value = fields[pair + 1].bytes else { continue }
            if name.hasPrefix("attr:") {
                let attribute = String(name.dropFirst(5))
                if isValidJSON(value) {
                    attributes[attribute] = value
                } else {
                    logger.warning(
                        "dropping a corrupt session attribute",
                        metadata: ["session": "\(id)", "attribute": "\(attribute)", "bytes": "\(value.count)"])
                }
            } else if name == "meta:created" {
                created = Int64(String(decoding: value, as: UTF8.self)) ?? 0
            } else if name == "meta:access" {
                access = Int64(String(decoding: value, as: UTF8.self)) ?? 0
            } else if name == "meta:version" {
                version = UInt64(String(decoding: value, as: UTF8.self)) ?? 0
            } else if name != "meta:bytes" && name != "meta:node" {
                logger.warning("ignoring a foreign field in a session hash", metadata: ["session": "\(id)", "field": "\(name)"])
            }
        }
        return SessionSnapshot(
            id: id, attributes: attributes, createdAtMillis: created, lastAccessedAtMillis: access, version: version)
    }

    public func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        try delta.checkPrincipalUntouched()
        var args = timeArguments
        args.append(delta.createIfMissing ? "1".redisBytes : "0".redisBytes)
        args.append(maxSessionBytes.redisBytes)
        var keys = [key(for: delta.id)]
        if let record = delta.idempotencyRecord {
            keys.append(idempotencyKey(record.key))
            if client.isCluster && RedisClusterSlot.of(key: keys[0]) != RedisClusterSlot.of(key: keys[1]) {
                throw SessionStoreError(
                    .invalidValue,
                    "the idempotency record and the session are in different Redis Cluster slots: a session created with a record needs an ID with the record's slot tag (Session does this; see SessionID.generate(slotTag:))")
            }
            args.append(max(1, record.ttlMillis).redisBytes)
            args.append(try Self.completedValue(record))
        } else {
            args += ["0".redisBytes, []]
            keys.append(keys[0])  // KEYS[2] unused
        }
        keys.append(principalIndexKey(slotTag: delta.id.slotTag))
        args += [delta.id.rawValue.redisBytes, nodeArgument]
        for change in delta.changes {
            switch change {
            case .set(let name, let value):
                args += ["s".redisBytes, Array("attr:\(name)".utf8), value]
            case .remove(let name):
                args += ["r".redisBytes, Array("attr:\(name)".utf8), []]
            case .increment(let name, let by):
                args += ["i".redisBytes, Array("attr:\(name)".utf8), by.redisBytes]
            }
        }
        let reply = try run(Self.applyScript, keys: keys, args: args, durability: durability)
        guard let items = reply.array, let status = items.first?.int else {
            throw SessionStoreError(.unavailable, "unexpected reply from the apply script: \(reply)")
        }
        switch status {
        case 0:
            return nil
        case -1:
            let field = items.count > 1 ? (items[1].string ?? "?") : "?"
            throw SessionStoreError(.typeMismatch, "attribute '\(field.dropFirst(5))' is not an integer")
        case -3:
            throw SessionStoreError.idempotencyKeyCompleted(delta.idempotencyRecord?.key ?? "?")
        case -2:
            let bytes = items.count > 1 ? (items[1].int ?? 0) : 0
            throw SessionStoreError(
                .sessionTooLarge, "session would hold \(bytes) bytes, the cap is \(maxSessionBytes)")
        case 1:
            guard items.count >= 3, let version = items[1].int, let created = items[2].int else {
                throw SessionStoreError(.unavailable, "unexpected reply from the apply script: \(reply)")
            }
            var counters: [String: Int64] = [:]
            var i = 3
            while i + 1 < items.count {
                if let field = items[i].string, let value = items[i + 1].int { counters[String(field.dropFirst(5))] = value }
                i += 2
            }
            if created == 1 { events.emit(.created, delta.id, atMillis: SessionClock.system.nowMillis()) }
            return AppliedDelta(version: UInt64(version), counters: counters, created: created == 1)
        default:
            throw SessionStoreError(.unavailable, "unexpected status \(status) from the apply script")
        }
    }

    public func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool {
        let (old, new) = (key(for: id), key(for: newID))
        if client.isCluster && RedisClusterSlot.of(key: old) != RedisClusterSlot.of(key: new) {
            throw SessionStoreError(
                .invalidValue,
                "a regenerated ID must keep the old one's slot tag on a Redis Cluster (SessionID.generate(slotTag:))")
        }
        let reply = try run(
            Self.regenerateScript, keys: [old, new, principalIndexKey(slotTag: id.slotTag), principalIndexKey(slotTag: newID.slotTag)],
            args: timeArguments + [id.rawValue.redisBytes, newID.rawValue.redisBytes], durability: durability)
        guard let items = reply.array, items.first?.int == 1 else { return false }
        let principal = items.count > 1 ? items[1].bytes.flatMap(decodeJSONString) : nil
        if let principal { try reschedule(from: id, to: newID, principal: principal) }
        events.emit(.regenerated, newID, previous: id, principal: principal, atMillis: SessionClock.system.nowMillis())
        return true
    }

    /// Deletes the session and its principal index entry, in one script.
    public func invalidate(_ id: SessionID) throws {
        try invalidate(id, as: .invalidated)
    }

    /// Deletes the session and its index entry; reports `kind` (nil: nothing) when it existed.
    func invalidate(_ id: SessionID, as kind: SessionEvent.Kind?) throws {
        let reply = try run(
            Self.invalidateScript, keys: [key(for: id), principalIndexKey(slotTag: id.slotTag)], args: [id.rawValue.redisBytes],
            durability: durability)
        guard let items = reply.array, items.first?.int == 1 else { return }
        let principal = items.count > 1 ? items[1].bytes.flatMap(decodeJSONString) : nil
        if let principal { try unschedule(id, principal: principal) }
        if let kind { events.emit(kind, id, principal: principal, atMillis: SessionClock.system.nowMillis()) }
    }

    /// A metadata field's integer value in an HGETALL reply.
    static func metaValue(_ name: String, in fields: [RedisValue]) -> Int64? {
        var i = 0
        while i + 1 < fields.count {
            if fields[i].string == name { return fields[i + 1].int }
            i += 2
        }
        return nil
    }

    // MARK: IdempotencyStore

    /// Claims are `P|<fingerprint>|<owner>`, the owner being the claiming
    /// process's `RedisClient.presenceID()`. A claim whose owner's connection
    /// Redis no longer lists (its node died, and the kernel closed its
    /// sockets) is taken over at once, not after `inProgressMillis`; should
    /// its node still be alive after all (Redis dropped the connection), the
    /// apply script's check on completed records keeps its changes out.
    public func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim {
        try Self.checkFingerprint(fingerprint)
        let record = idempotencyKey(key)
        let lease = max(1, inProgressMillis).redisBytes
        return try redis {
            try client.withConnection(forKey: record) { connection throws -> IdempotencyClaim in
                // Client IDs are per server: the presence on the server that holds the record.
                let me = try client.presenceID(onServerOf: connection).redisBytes
                for _ in 0..<3 {
                    let reply = try connection.eval(Self.beginScript, keys: [record], args: [fingerprint.redisBytes, lease, me])
                    guard let items = reply.array, let status = items.first?.int else {
                        throw SessionStoreError(.unavailable, "unexpected reply from the idempotency script: \(reply)")
                    }
                    switch status {
                    case 1:
                        return .claimed
                    case 2:
                        guard items.count > 1, let owner = items[1].string, Int(owner) != nil,
                            try isClosed(clientID: owner, asking: connection)
                        else { return .inProgress }
                        let taken = try connection.eval(
                            Self.takeOverScript, keys: [record], args: [fingerprint.redisBytes, owner.redisBytes, me, lease])
                        if taken.int == 1 {
                            logger.notice(
                                "took over an idempotency claim whose Redis connection is closed",
                                metadata: ["idempotency_record": "\(IdempotentRequest.logID(storageKey: key))", "redis_client": "\(owner)"])
                            return .claimed
                        }
                    case 3:
                        if items.count > 1, let bytes = items[1].bytes, let response = StoredResponse.decode(bytes) {
                            return .completed(response)
                        }
                        logger.warning("dropping a corrupt idempotency record", metadata: ["key": "\(key)"])
                        _ = try connection.eval(
                            Self.dropCorruptScript, keys: [record], args: [fingerprint.redisBytes, items.count > 1 ? (items[1].bytes ?? []) : []])
                    default:
                        return .mismatch
                    }
                }
                return .inProgress
            }
        }
    }

    /// Whether Redis no longer lists connection `clientID`. An error (e.g.
    /// an ACL without CLIENT) counts as open: the claim then lasts its lease.
    private func isClosed(clientID: String, asking connection: RedisConnection) throws -> Bool {
        let reply = try connection.command(["CLIENT".redisBytes, "LIST".redisBytes, "ID".redisBytes, clientID.redisBytes])
        if case .error(let message) = reply {
            logger.debug("CLIENT LIST failed; idempotency claims wait for their lease", metadata: ["error": "\(message)"])
            return false
        }
        return reply.bytes?.isEmpty ?? false
    }

    public func complete(_ record: IdempotencyRecord) throws {
        _ = try run(
            Self.completeScript, keys: [idempotencyKey(record.key)],
            args: [try Self.completedValue(record), max(1, record.ttlMillis).redisBytes], durability: durability)
    }

    /// Deletes this process's claim of `key`, not one a retry took over.
    public func abandon(key: String) throws {
        let record = idempotencyKey(key)
        let owner = try redis { try client.presenceID(forKey: record) }
        _ = try run(Self.abandonScript, keys: [record], args: [owner.redisBytes])
    }

    private static func checkFingerprint(_ fingerprint: String) throws {
        guard !fingerprint.contains("|") else {
            throw SessionStoreError(.invalidValue, "an idempotency fingerprint may not contain '|'")
        }
    }

    /// `C|<fingerprint>|<response JSON>`.
    private static func completedValue(_ record: IdempotencyRecord) throws -> [UInt8] {
        try checkFingerprint(record.fingerprint)
        return Array("C|\(record.fingerprint)|".utf8) + record.response.encoded()
    }

    func run(
        _ script: RedisScript, keys: [[UInt8]], args: [[UInt8]], durability: RedisDurability? = nil
    ) throws -> RedisValue {
        try redis { try client.eval(script, keys: keys, args: args, durability: durability) }
    }

    /// Runs `body`; a Redis failure becomes `unavailable` (503), other errors pass as they are.
    @discardableResult
    func redis<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as RedisError {
            throw SessionStoreError(.unavailable, "Redis: \(error.message)")
        }
    }

    // MARK: - Scripts

    /// Shared Lua: `now` on Redis's clock, and the TTL rule.
    static let prelude = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local idle = tonumber(ARGV[1])
        local absolute = tonumber(ARGV[2])
        local function ttl(created)
          local left = idle
          if absolute > 0 then left = math.min(left, created + absolute - now) end
          return left
        end
        -- The principal index entry of session `id`, whose principal attribute is `p` (JSON, or
        -- false): scored with the session's expiry time; the set lives as long as its longest entry.
        local function reindex(idx, p, id, left)
          if not p then return end
          redis.call('ZADD', idx, now + left, cjson.decode(p) .. '\\n' .. id)
          if redis.call('PTTL', idx) < left then redis.call('PEXPIRE', idx, left) end
        end

        """

    /// KEYS[1] session, KEYS[2] its principal index; ARGV idle, absolute, touch interval, ID, node.
    /// Returns the hash (touched when due) or nil.
    /// Run by `load` only when its plain read found the idle timer due for a refresh.
    static let loadScript = RedisScript(name: "session-load", source: prelude + """
        local key = KEYS[1]
        local h = redis.call('HGETALL', key)
        if #h == 0 then return false end
        local created, access
        local principal = false
        for i = 1, #h, 2 do
          if h[i] == 'meta:created' then created = tonumber(h[i + 1]) end
          if h[i] == 'meta:access' then access = tonumber(h[i + 1]) end
          if h[i] == 'attr:sessioncluster.principal' then principal = h[i + 1] end
        end
        if not created or not access then return false end
        local left = ttl(created)
        if left <= 0 or now - access >= idle then
          redis.call('DEL', key)
          return false
        end
        if now - access >= tonumber(ARGV[3]) then
          redis.call('HSET', key, 'meta:access', now)
          if ARGV[5] ~= '' then redis.call('HSET', key, 'meta:node', ARGV[5]) end
          redis.call('PEXPIRE', key, left)
          reindex(KEYS[2], principal, ARGV[4], left)
          for i = 1, #h, 2 do
            if h[i] == 'meta:access' then h[i + 1] = tostring(now) end
          end
        end
        return h
        """)

    /// KEYS[1] session, KEYS[2] idempotency record (unused without one), KEYS[3] principal index;
    /// ARGV idle, absolute, create (0/1), max bytes, record TTL (0: none), record value, ID, node,
    /// then (op, field, value) triples.
    /// Validates everything before the first write, so a failing delta changes nothing,
    /// and writes the record in the same step as the changes.
    static let applyScript = RedisScript(name: "session-apply", source: prelude + """
        local key = KEYS[1]
        local create = ARGV[3] == '1'
        -- Another run of the request completed it first (it took over this run's claim).
        if tonumber(ARGV[5]) > 0 then
          local record = redis.call('GET', KEYS[2])
          if record and string.sub(record, 1, 2) == 'C|' then return {-3} end
        end
        local maxBytes = tonumber(ARGV[4])
        -- One read: metadata and every field the delta touches.
        local fields = {'meta:created', 'meta:access', 'meta:bytes', 'meta:version', 'attr:sessioncluster.principal'}
        for i = 9, #ARGV, 3 do fields[#fields + 1] = ARGV[i + 1] end
        local got = redis.call('HMGET', key, unpack(fields))
        local created = tonumber(got[1])
        local isNew = false
        if created and (ttl(created) <= 0 or now - (tonumber(got[2]) or created) >= idle) then
          redis.call('DEL', key)
          created = nil
        end
        local old = {}
        if created then
          for i = 6, #fields do old[fields[i]] = got[i] end
        else
          if not create then return {0} end
          created = now
          isNew = true
        end
        local bytes = 0
        local version = 1
        if not isNew then
          bytes = tonumber(got[3]) or 0
          version = (tonumber(got[4]) or 0) + 1
        end
        -- Work out the new values first: a failing delta writes nothing.
        local values = {}
        local counters = {}
        for i = 9, #ARGV, 3 do
          local op, field, arg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
          local current = values[field]
          if current == nil then current = old[field] or false end
          if current then bytes = bytes - #field - #current end
          local new
          if op == 's' then
            new = arg
          elseif op == 'r' then
            new = false
          else
            local n = 0
            if current then
              if not string.match(current, '^%-?%d+$') or #current > 17 then return {-1, field} end
              n = tonumber(current)
            end
            n = n + tonumber(arg)
            if n > 9007199254740991 or n < -9007199254740991 then return {-1, field} end
            new = string.format('%d', n)
            counters[field] = new
          end
          values[field] = new
          if new then bytes = bytes + #field + #new end
        end
        if bytes > maxBytes then return {-2, bytes} end
        -- Then write: one HSET, at most one HDEL.
        local sets = {'meta:access', now, 'meta:bytes', bytes, 'meta:version', version}
        if ARGV[8] ~= '' then
          sets[#sets + 1] = 'meta:node'
          sets[#sets + 1] = ARGV[8]
        end
        if isNew then
          sets[#sets + 1] = 'meta:created'
          sets[#sets + 1] = created
        end
        local removes = {}
        for field, new in pairs(values) do
          if new then
            sets[#sets + 1] = field
            sets[#sets + 1] = new
          elseif not isNew then
            removes[#removes + 1] = field
          end
        end
        redis.call('HSET', key, unpack(sets))
        if #removes > 0 then redis.call('HDEL', key, unpack(removes)) end
        redis.call('PEXPIRE', key, math.max(1, ttl(created)))
        if not isNew then reindex(KEYS[3], got[5], ARGV[7], math.max(1, ttl(created))) end
        if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[5]) end
        local out = {1, version, isNew and 1 or 0}
        for field, value in pairs(counters) do
          out[#out + 1] = field
          out[#out + 1] = value
        end
        return out
        """)

    /// KEYS[1] record; ARGV fingerprint, in-progress TTL, owner (client id). 1 claimed,
    /// 2 in progress (+ owner), 3 completed (+ response), 4 mismatch.
    static let beginScript = RedisScript(name: "idempotency-begin", source: """
        local v = redis.call('GET', KEYS[1])
        if not v then
          redis.call('SET', KEYS[1], 'P|' .. ARGV[1] .. '|' .. ARGV[3], 'PX', ARGV[2])
          return {1}
        end
        local kind = string.sub(v, 1, 1)
        local rest = string.sub(v, 3)
        local sep = string.find(rest, '|', 1, true)
        local fp = rest
        local tail = ''
        if sep then
          fp = string.sub(rest, 1, sep - 1)
          tail = string.sub(rest, sep + 1)
        end
        if fp ~= ARGV[1] then return {4} end
        if kind == 'P' then return {2, tail} end
        return {3, tail}
        """)

    /// KEYS[1] record; ARGV fingerprint, old owner, new owner, in-progress TTL.
    /// 1 when the old owner's claim became the new owner's, 0 when it had changed.
    static let takeOverScript = RedisScript(name: "idempotency-take-over", source: """
        if redis.call('GET', KEYS[1]) ~= 'P|' .. ARGV[1] .. '|' .. ARGV[2] then return 0 end
        redis.call('SET', KEYS[1], 'P|' .. ARGV[1] .. '|' .. ARGV[3], 'PX', ARGV[4])
        return 1
        """)

    /// KEYS[1] record; ARGV completed value, TTL. A completed record is never replaced.
    static let completeScript = RedisScript(name: "idempotency-complete", source: """
        local v = redis.call('GET', KEYS[1])
        if v and string.sub(v, 1, 2) == 'C|' then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
        """)

    /// KEYS[1] record; ARGV owner. Deleted only while in progress and claimed by that owner.
    static let abandonScript = RedisScript(name: "idempotency-abandon", source: """
        local v = redis.call('GET', KEYS[1])
        local suffix = '|' .. ARGV[1]
        if v and string.sub(v, 1, 2) == 'P|' and string.sub(v, -#suffix) == suffix then redis.call('DEL', KEYS[1]) end
        return 1
        """)

    /// KEYS[1] record; ARGV fingerprint, the completed value's tail that did not decode. Deleted only if unchanged.
    static let dropCorruptScript = RedisScript(name: "idempotency-drop-corrupt", source: """
        if redis.call('GET', KEYS[1]) == 'C|' .. ARGV[1] .. '|' .. ARGV[2] then redis.call('DEL', KEYS[1]) end
        return 1
        """)

    /// KEYS[1] old, KEYS[2] new, KEYS[3] and KEYS[4] their principal indexes; ARGV idle, absolute,
    /// old ID, new ID. Returns 1 when moved, 0 when the old one is gone.
    static let regenerateScript = RedisScript(name: "session-regenerate", source: prelude + """
        local meta = redis.call('HMGET', KEYS[1], 'meta:created', 'meta:access', 'attr:sessioncluster.principal')
        local created = tonumber(meta[1])
        if not created then return 0 end
        if ttl(created) <= 0 or now - (tonumber(meta[2]) or created) >= idle then
          redis.call('DEL', KEYS[1])
          return 0
        end
        redis.call('RENAME', KEYS[1], KEYS[2])
        redis.call('HSET', KEYS[2], 'meta:access', now)
        redis.call('HINCRBY', KEYS[2], 'meta:version', 1)
        redis.call('PEXPIRE', KEYS[2], ttl(created))
        if meta[3] then
          redis.call('ZREM', KEYS[3], cjson.decode(meta[3]) .. '\\n' .. ARGV[3])
          reindex(KEYS[4], meta[3], ARGV[4], ttl(created))
        end
        return {1, meta[3]}
        """)

    /// KEYS[1] session, KEYS[2] its principal index; ARGV ID. Deletes both the session and its entry;
    /// {1, principal JSON or nil} when the session existed, {0} otherwise.
    static let invalidateScript = RedisScript(name: "session-invalidate", source: """
        local p = redis.call('HGET', KEYS[1], 'attr:sessioncluster.principal')
        if redis.call('DEL', KEYS[1]) == 0 then return {0} end
        if p then redis.call('ZREM', KEYS[2], cjson.decode(p) .. '\\n' .. ARGV[1]) end
        return {1, p}
        """)
}
