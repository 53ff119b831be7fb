import SessionCore
import SystemSupport

/// Sessions by principal on Redis, Redis Cluster included, with no cleanup
/// job, no keyspace notifications, no `CONFIG` and no `KEYS`/`SCAN`.
///
/// A login gives the session an ID with its principal's slot tag
/// (`SessionPrincipal.slotTag(of:)`), so all of a principal's sessions and
/// their index (`principalIndexKey(slotTag:)`) share one hash slot: the
/// limit check, the evictions and the new session are one script there. Each
/// index entry is scored with its session's expiry time and kept by the
/// scripts that write or touch the session (zero extra commands on requests
/// that do not log in or out); listings and logins drop entries past their
/// score or without a session, and the index key expires with its
/// longest-lived entry, so nothing is left behind when every session is gone.
///
/// The session as it was before the login is read with a plain `HGETALL`
/// (it is in another slot) and deleted after the login script: a write to
/// the pre-login ID between the two is lost, as it would be to an ID that
/// expired.
extension RedisSessionStore {
    public func changePrincipal(_ change: PrincipalChange) throws -> PrincipalChangeResult {
        if let principal = change.principal {
            try SessionPrincipal.validate(principal)
            guard change.newID.slotTag == SessionPrincipal.slotTag(of: principal) else {
                throw SessionStoreError(
                    .invalidValue, "a logged-in session's ID must carry its principal's slot tag (SessionPrincipal.slotTag(of:))")
            }
        }
        var created: Int64 = 0
        var copied: [[UInt8]] = []
        if let id = change.id, case .array(let fields) = try redis({ try client.send(["HGETALL".redisBytes, key(for: id)]) }) {
            var i = 0
            while i + 1 < fields.count {
                if let name = fields[i].string, let value = fields[i + 1].bytes {
                    if name == "meta:created" {
                        created = Int64(String(decoding: value, as: UTF8.self)) ?? 0
                    } else if name.hasPrefix("attr:"), name != "attr:\(SessionPrincipal.attribute)",
                        name != "attr:\(SessionPrincipal.clientAttribute)"
                    {
                        copied += [Array(name.utf8), value]
                    }
                }
                i += 2
            }
        }
        let limit = change.principal == nil ? nil : principalLimit
        var args = timeArguments
        args += [
            (change.principal ?? "").redisBytes,
            change.principal.map(SessionPrincipal.json) ?? [],
            change.principal == nil ? [] : (change.client.map(SessionPrincipal.json) ?? []),
            nodeArgument,
            (limit?.maxSessions ?? 0).redisBytes,
            (limit?.whenExceeded == .refuseNewLogin ? "r" : "e").redisBytes,
            (change.id?.rawValue ?? "").redisBytes,
            created.redisBytes,
            sessionKeyPrefix(slotTag: change.newID.slotTag),
            change.newID.rawValue.redisBytes,
        ]
        args += copied
        let reply = try run(
            Self.changePrincipalScript, keys: [key(for: change.newID), principalIndexKey(slotTag: change.newID.slotTag)],
            args: args, durability: client.configuration.durability)
        guard let items = reply.array, let status = items.first?.int else {
            throw SessionStoreError(.unavailable, "unexpected reply from the login script: \(reply)")
        }
        if status == -4, let limit { throw SessionStoreError.principalLimitReached(limit) }
        guard status == 1, items.count >= 2, let deadline = items[1].int else {
            throw SessionStoreError(.unavailable, "unexpected reply from the login script: \(reply)")
        }
        let evicted = items.dropFirst(2).compactMap { $0.string.flatMap(SessionID.init(rawValue:)) }
        var existed = false
        if let id = change.id {
            existed = !copied.isEmpty || created != 0
            try invalidate(id, as: nil)  // part of the login: no event of its own
        }
        let now = SessionClock.system.nowMillis()
        if let principal = change.principal {
            for id in evicted {
                try unschedule(id, principal: principal)
                events.emit(.evicted, id, principal: principal, atMillis: now)
            }
            try schedule(change.newID, principal: principal, deadlineMillis: deadline)
        }
        events.emit(
            change.principal == nil ? .principalCleared : .principalSet, change.newID, previous: existed ? change.id : nil,
            principal: change.principal, atMillis: now)
        return PrincipalChangeResult(evicted: evicted)
    }

    public func sessions(ofPrincipal principal: String) throws -> [PrincipalSessionEntry] {
        try SessionPrincipal.validate(principal)
        let tag = SessionPrincipal.slotTag(of: principal)
        let reply = try run(
            Self.listPrincipalScript, keys: [principalIndexKey(slotTag: tag)],
            args: [principal.redisBytes, sessionKeyPrefix(slotTag: tag)])
        guard let items = reply.array, items.count % 5 == 0 else {
            throw SessionStoreError(.unavailable, "unexpected reply from the listing script: \(reply)")
        }
        var entries: [PrincipalSessionEntry] = []
        for i in stride(from: 0, to: items.count, by: 5) {
            guard let id = items[i].string.flatMap(SessionID.init(rawValue:)) else { continue }
            let node = items[i + 3].string ?? ""
            entries.append(
                PrincipalSessionEntry(
                    id: id, createdAtMillis: Int64(items[i + 1].string ?? "") ?? 0,
                    lastAccessedAtMillis: Int64(items[i + 2].string ?? "") ?? 0, node: node.isEmpty ? nil : node,
                    client: items[i + 4].bytes.flatMap { $0.isEmpty ? nil : decodeJSONString($0) }))
        }
        return entries.sorted { ($0.createdAtMillis, $0.id.rawValue) < ($1.createdAtMillis, $1.id.rawValue) }
    }

    /// `<prefix>{<slot tag>}:`, the start of the key of every session with that tag.
    func sessionKeyPrefix(slotTag: String) -> [UInt8] { Array("\(keyPrefix){\(slotTag)}:".utf8) }

    /// Shared Lua of the principal scripts: the live entries of a principal in an index.
    private static let principalEntries = """
        -- Entries past their score go first; then the members of `name` whose session is gone.
        local function liveEntries(idx, name, sessionPrefix, fields)
          redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
          local prefix = name .. '\\n'
          local live = {}
          for _, m in ipairs(redis.call('ZRANGEBYLEX', idx, '[' .. prefix, '(' .. name .. '\\11')) do
            local id = string.sub(m, #prefix + 1)
            local got = redis.call('HMGET', sessionPrefix .. id, unpack(fields))
            if got[1] then
              live[#live + 1] = {id = id, member = m, got = got}
            else
              redis.call('ZREM', idx, m)
            end
          end
          return live
        end
        -- The index lives exactly as long as its longest-lived entry.
        local function fitExpiry(idx)
          local last = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
          if #last > 0 then redis.call('PEXPIREAT', idx, tonumber(last[2])) end
        end

        """

    /// KEYS[1] the new session, KEYS[2] the principal index of its slot; ARGV idle, absolute,
    /// principal ("" to log out), its JSON, client JSON, node, limit (0: none), 'e' evict or 'r'
    /// refuse, the old ID (not counted), its creation time (0: none), the session key prefix of
    /// the slot, the new ID, then (field, value) pairs to copy. {1, the new session's expiry
    /// time, evicted IDs...} or {-4}.
    static let changePrincipalScript = RedisScript(name: "session-change-principal", source: prelude + principalEntries + """
        local key, idx = KEYS[1], KEYS[2]
        local name, principal, client, node = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
        local max, oldID, created, sessionPrefix = tonumber(ARGV[7]), ARGV[9], tonumber(ARGV[10]), ARGV[11]
        local out = {1, 0}
        if name ~= '' and max > 0 then
          local live = {}
          for _, e in ipairs(liveEntries(idx, name, sessionPrefix, {'meta:access'})) do
            if e.id ~= oldID then live[#live + 1] = e end
          end
          if #live + 1 > max then
            if ARGV[8] == 'r' then return {-4} end
            table.sort(live, function(a, b)
              local x, y = tonumber(a.got[1]), tonumber(b.got[1])
              if x ~= y then return x < y end
              return a.id < b.id
            end)
            for i = 1, #live + 1 - max do
              redis.call('DEL', sessionPrefix .. live[i].id)
              redis.call('ZREM', idx, live[i].member)
              out[#out + 1] = live[i].id
            end
          end
        end
        if created == 0 or ttl(created) <= 0 then created = now end
        local left = ttl(created)
        local sets = {'meta:created', created, 'meta:access', now, 'meta:version', 1}
        local bytes = 0
        local function add(field, value)
          sets[#sets + 1] = field
          sets[#sets + 1] = value
          bytes = bytes + #field + #value
        end
        for i = 13, #ARGV, 2 do add(ARGV[i], ARGV[i + 1]) end
        if name ~= '' then add('attr:sessioncluster.principal', principal) end
        if name ~= '' and client ~= '' then add('attr:sessioncluster.client', client) end
        if node ~= '' then
          sets[#sets + 1] = 'meta:node'
          sets[#sets + 1] = node
        end
        sets[#sets + 1] = 'meta:bytes'
        sets[#sets + 1] = bytes
        redis.call('DEL', key)
        redis.call('HSET', key, unpack(sets))
        redis.call('PEXPIRE', key, left)
        if name ~= '' then
          reindex(idx, principal, ARGV[12], left)
          fitExpiry(idx)
        end
        out[2] = now + left
        return out
        """)

    /// KEYS[1] the principal index; ARGV principal, the session key prefix of its slot.
    /// {ID, created, last access, node, client JSON} for each live session.
    static let listPrincipalScript = RedisScript(name: "session-list-principal", source: """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

        """ + principalEntries + """
        local out = {}
        local fields = {'meta:created', 'meta:access', 'meta:node', 'attr:sessioncluster.client'}
        for _, e in ipairs(liveEntries(KEYS[1], ARGV[1], ARGV[2], fields)) do
          out[#out + 1] = e.id
          out[#out + 1] = e.got[1]
          out[#out + 1] = e.got[2] or '0'
          out[#out + 1] = e.got[3] or ''
          out[#out + 1] = e.got[4] or ''
        end
        fitExpiry(KEYS[1])
        return out
        """)
}
