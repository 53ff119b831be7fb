import Logging
import Synchronization
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// Sends each command to the primary that owns its key's slot, with a pool
/// of connections per primary, opened lazily.
///
/// The slot map comes from `CLUSTER SLOTS`, asked of the known primaries and
/// then of the seeds. Redirections are followed within the command timeout:
/// `MOVED` updates the map and resends; `ASK` resends once on the target
/// after `ASKING`; `TRYAGAIN`, `CLUSTERDOWN`, an unassigned slot or a
/// primary that cannot be reached (nothing was sent) back off, refresh the
/// map and resend. A failure after a command was sent is not resent: its
/// outcome is unknown, and the caller decides (the session store answers 503,
/// and an `Idempotency-Key` makes the client's retry safe).
final class RedisClusterRouter: Sendable {
    let seeds: [RedisNodeAddress]
    let configuration: RedisConfiguration
    let logger: Logger

    private struct Topology {
        var map = RedisSlotMap()
        var known = false
        /// Bumped by every refresh: a caller refreshes only if nobody did since it read the map.
        var version = 0
        var lastRefreshError: RedisError?
        var nextRefreshAllowed: Int64 = 0
    }

    private let topology = Mutex(Topology())
    /// Held while asking for the slot map: one refresh at a time.
    private let refreshing = Mutex(())
    private let pools = Mutex<[RedisNodeAddress: RedisNodePool]>([:])

    /// Redirections followed for one command at most (a slot that bounces between primaries).
    static let maxRedirects = 16
    /// The shortest wait between two failed refreshes.
    static let refreshBackoffMillis: Int64 = 100

    init(seeds: [RedisNodeAddress], configuration: RedisConfiguration, logger: Logger) {
        precondition(!seeds.isEmpty, "a Redis Cluster needs at least one seed")
        self.seeds = seeds
        self.configuration = configuration
        self.logger = logger
    }

    /// The pool of connections to `address`, created on first use.
    func pool(for address: RedisNodeAddress) -> RedisNodePool {
        pools.withLock { pools in
            if let pool = pools[address] { return pool }
            let configuration = configuration
            let pool = RedisNodePool(configuration: configuration, logger: logger) {
                try RedisConnection(host: address.host, port: address.port, configuration: configuration)
            }
            pools[address] = pool
            return pool
        }
    }

    /// The pool of the primary that owns `slot` (any primary when nil) in the current map.
    func pool(forSlot slot: Int?) throws -> RedisNodePool {
        guard let primary = try primary(forSlot: slot).primary else {
            throw RedisError(.connection, "no Redis Cluster primary serves slot \(slot ?? -1)")
        }
        return pool(for: primary)
    }

    /// The primaries of the current slot map (asking for it first when none is known).
    func primaries() throws -> [RedisNodeAddress] {
        try knownMap().primaries
    }

    /// Makes the next command ask for the slot map first.
    func forgetMap() {
        topology.withLock { $0.known = false }
    }

    /// Runs `attempt` with the pool of the primary owning `slot` (any
    /// primary when nil) and whether to send `ASKING`, following
    /// redirections as described above: `attempt` runs again after one.
    func route<T>(slot: Int?, _ attempt: (RedisNodePool, _ asking: Bool) throws -> T) throws -> T {
        let deadline = monotonicMillis() + Int64(configuration.commandTimeoutMillis)
        var asking: RedisNodeAddress? = nil
        var backoff = 5
        var redirects = 0
        while true {
            let target: RedisNodeAddress
            let version: Int
            if let asking {
                (target, version) = (asking, topology.withLock { $0.version })
            } else {
                let route = try primary(forSlot: slot)
                guard let primary = route.primary else {
                    let error = RedisError(.server, "CLUSTERDOWN slot \(slot ?? -1) has no primary")
                    try pause(&backoff, until: deadline, refreshingFrom: route.version, lastError: error)
                    continue
                }
                (target, version) = (primary, route.version)
            }
            let pool = pool(for: target)
            do {
                return try attempt(pool, asking != nil)
            } catch let notSent as RedisNotSent {
                // Nothing was sent: a dead or unreachable primary. A failover may be under way.
                asking = nil
                let error = RedisError(notSent.error.code, "\(target): \(notSent.error.message)")
                try pause(&backoff, until: deadline, refreshingFrom: version, lastError: error)
            } catch let error as RedisError where error.code == .server {
                guard let redirect = RedisRedirect(errorMessage: error.message) else { throw error }
                redirects += 1
                guard redirects <= Self.maxRedirects, monotonicMillis() < deadline else {
                    throw RedisError(.server, "gave up after \(redirects) cluster redirections: \(error.message)")
                }
                switch redirect {
                case .moved(let slot, let to):
                    asking = nil
                    topology.withLock { $0.map.assign(slot, to: to) }
                    logger.debug("redis cluster: MOVED", metadata: ["slot": "\(slot)", "to": "\(to)"])
                    try? refresh(ifStillAt: version)  // the map has more news than this one slot
                case .ask(_, let to):
                    asking = to
                case .retryLater:
                    asking = nil
                    try pause(&backoff, until: deadline, refreshingFrom: version, lastError: error)
                }
            } catch let error as RedisError where error.code == .connection || error.code == .timeout {
                pool.dropIdle()  // the server went away: its idle connections are dead too
                topology.withLock { if $0.version == version { $0.known = false } }  // ask for the map next time
                throw error
            }
        }
    }

    /// Drops every pool's idle and presence connections.
    func close() {
        for pool in pools.withLock({ Array($0.values) }) { pool.close() }
    }

    // MARK: - The slot map

    private func knownMap() throws -> RedisSlotMap {
        let (known, version) = topology.withLock { ($0.known, $0.version) }
        if !known { try refresh(ifStillAt: version) }
        return topology.withLock { $0.map }
    }

    private func primary(forSlot slot: Int?) throws -> (primary: RedisNodeAddress?, version: Int) {
        let map = try knownMap()
        let version = topology.withLock { $0.version }
        guard let slot else {
            return (map.primaries.isEmpty ? nil : map.primaries[Int.random(in: 0..<map.primaries.count)], version)
        }
        return (map.primary(forSlot: slot), version)
    }

    /// Waits the current backoff (doubling, up to 100 ms) within `deadline`, then refreshes the map; throws `lastError` past the deadline.
    private func pause(_ backoff: inout Int, until deadline: Int64, refreshingFrom version: Int, lastError: RedisError) throws {
        let left = deadline - monotonicMillis()
        guard left > 0 else { throw lastError }
        sleepMillis(min(Int64(backoff), left))
        backoff = min(backoff * 2, 100)
        do {
            try refresh(ifStillAt: version)
        } catch {
            if monotonicMillis() >= deadline { throw lastError }
        }
    }

    /// Asks for the slot map unless someone did since `version`. Tries the
    /// known primaries, then the seeds; the first complete answer wins (a
    /// partial one when none is complete). Failures are remembered for
    /// `refreshBackoffMillis`, so a cluster that is down costs each caller
    /// one quick error, not a round of connects.
    func refresh(ifStillAt version: Int) throws {
        try refreshing.withLock { _ throws(RedisError) in
            let (current, known, candidates, blocked) = topology.withLock { t in
                (t.version, t.known, t.map.primaries, monotonicMillis() < t.nextRefreshAllowed ? t.lastRefreshError : nil)
            }
            if current != version && known { return }
            if let blocked { throw blocked }
            var failures: [String] = []
            var best: RedisSlotMap? = nil
            var tried = Set<RedisNodeAddress>()
            for address in candidates + seeds where tried.insert(address).inserted {
                do {
                    let connection = try RedisConnection(host: address.host, port: address.port, configuration: configuration)
                    let reply = try connection.command(["CLUSTER".redisBytes, "SLOTS".redisBytes])
                        .throwingServerError(context: "CLUSTER SLOTS")
                    let map = try RedisSlotMap(clusterSlots: reply, askedHost: address.host)
                    if map.assignedSlots > (best?.assignedSlots ?? 0) { best = map }
                    if map.assignedSlots == RedisClusterSlot.count { break }
                    failures.append("\(address): \(map.assignedSlots) of \(RedisClusterSlot.count) slots assigned")
                } catch let error as RedisError {
                    failures.append("\(address): \(error.message)")
                } catch {
                    failures.append("\(address): \(error)")
                }
            }
            guard let best else {
                let error = RedisError(
                    .connection, "no Redis Cluster node answered CLUSTER SLOTS: " + failures.joined(separator: "; "))
                topology.withLock { t in
                    t.lastRefreshError = error
                    t.nextRefreshAllowed = monotonicMillis() + Self.refreshBackoffMillis
                }
                logger.warning("redis cluster: no slot map", metadata: ["error": "\(error.message)"])
                throw error
            }
            let changed = topology.withLock { t -> Bool in
                let changed = t.map != best
                t.map = best
                t.known = true
                t.version += 1
                t.lastRefreshError = nil
                return changed
            }
            if changed {
                logger.info(
                    "redis cluster: slot map",
                    metadata: [
                        "primaries": "\(best.primaries.map(\.description).joined(separator: ","))",
                        "slots_assigned": "\(best.assignedSlots)",
                    ])
            }
        }
    }
}
