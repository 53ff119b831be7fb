import Dispatch
import SystemSupport

/// One connection that many threads send on at once (automatic pipelining,
/// as ioredis, StackExchange.Redis and valkey-swift do): commands that
/// arrive while a batch is on the wire are queued, and the next batch sends
/// them all in one write, reading their replies back in order.
///
/// No thread of its own: the first caller to find the connection idle
/// drives it — writes the queue, reads every reply, hands each caller its
/// own — then hands the role to the first caller still queued and returns
/// with its reply. So one Redis read and write serve a whole batch, on both
/// sides, instead of one per command.
///
/// The connection comes from the node's pool (its connect backoff and
/// errors); an I/O error fails the whole batch (each command's outcome is
/// unknown) and the next batch connects again.
final class RedisPipeline: Sendable {

    /// One caller's commands, and its reply or the role of driver, handed over by another thread.
    private final class Pending: @unchecked Sendable {  // `outcome` and `drives` are written before `wake` signals
        let commands: [[[UInt8]]]
        let asking: Bool
        let durability: RedisDurability?
        var outcome: Result<(replies: [RedisValue], waited: RedisValue?), any Error>?
        var drives = false
        let wake = DispatchSemaphore(value: 0)

        init(commands: [[[UInt8]]], asking: Bool, durability: RedisDurability?) {
            self.commands = commands
            self.asking = asking
            self.durability = durability
        }
    }

    private struct State {
        var connection: RedisConnection?
        var queue: [Pending] = []
        var driving = false
        /// `reset` came while a batch was on the wire: its driver drops the connection after it.
        var dropRequested = false
    }

    private let state = FastLock(State())

    /// Sends `commands` (after `ASKING` each, when `asking`) in the next
    /// batch, on a connection from `pool`; their replies in order. With
    /// `durability`, the batch ends with one `WAIT` for the most replicas any
    /// of its callers asked for (group commit), and its reply is theirs.
    /// Throws `RedisNotSent` when no connection could be had (nothing was
    /// sent), or the batch's I/O error.
    func send(
        _ commands: [[[UInt8]]], asking: Bool, durability: RedisDurability?, pool: RedisNodePool
    ) throws -> (replies: [RedisValue], waited: RedisValue?) {
        let me = Pending(commands: commands, asking: asking, durability: durability)
        let drive = state.withLock { s -> Bool in
            s.queue.append(me)
            if s.driving { return false }
            s.driving = true
            return true
        }
        if !drive {
            me.wake.wait()
            if me.drives { runBatch(pool) }
        } else {
            runBatch(pool)
        }
        return try me.outcome!.get()
    }

    /// Drops the connection (the server went away, or is no master any more).
    func reset(_ pool: RedisNodePool) {
        let dropped = state.withLock { s -> RedisConnection? in
            guard !s.driving else {
                s.dropRequested = true
                return nil
            }
            defer { s.connection = nil }
            return s.connection
        }
        if let dropped {
            dropped.markBroken()
            pool.checkIn(dropped)
        }
    }

    /// Takes the connection away (its pool is going away).
    func detach() -> RedisConnection? {
        state.withLock { s in
            defer { s.connection = nil }
            return s.connection
        }
    }

    /// Sends everything queued as one batch, answers each caller, then hands
    /// the driver's role to the first caller queued meanwhile (if any).
    private func runBatch(_ pool: RedisNodePool) {
        let (batch, current) = state.withLock { s in
            defer { s.queue = [] }
            return (s.queue, s.connection)
        }
        var failure: (any Error)? = nil
        var connection = current
        if connection == nil {
            do {
                connection = try pool.checkOut()
            } catch let error as RedisError {
                failure = RedisNotSent(error: error)
            } catch {
                failure = error
            }
        }
        if let connection, failure == nil {
            do {
                var commands: [[[UInt8]]] = []
                var wait: RedisDurability? = nil
                for pending in batch {
                    for command in pending.commands {
                        if pending.asking { commands.append(["ASKING".redisBytes]) }
                        commands.append(command)
                    }
                    if let asked = pending.durability {
                        wait = RedisDurability(
                            replicas: max(wait?.replicas ?? 0, asked.replicas),
                            timeoutMillis: max(wait?.timeoutMillis ?? 0, asked.timeoutMillis))
                    }
                }
                let (replies, waited) = try connection.pipeline(commands, durability: wait)
                var next = 0
                for pending in batch {
                    var own: [RedisValue] = []
                    own.reserveCapacity(pending.commands.count)
                    for _ in pending.commands {
                        if pending.asking { next += 1 }  // ASKING's OK
                        own.append(replies[next])
                        next += 1
                    }
                    pending.outcome = .success((own, pending.durability == nil ? nil : waited))
                }
            } catch {
                failure = error
            }
        }
        if let failure {
            for pending in batch { pending.outcome = .failure(failure) }
        }
        let (broken, successor) = state.withLock { s -> (Bool, Pending?) in
            let broken = (connection?.isBroken ?? false) || s.dropRequested
            s.dropRequested = false
            s.connection = broken ? nil : connection
            guard let first = s.queue.first else {
                s.driving = false
                return (broken, nil)
            }
            first.drives = true
            return (broken, first)
        }
        if broken, let connection {
            connection.markBroken()
            pool.checkIn(connection)  // dropped: frees its place in the pool
        }
        // The driver's own semaphore is signalled too, unread: a semaphore above its start value is harmless.
        for pending in batch { pending.wake.signal() }
        successor?.wake.signal()
    }
}

/// A command that was never sent: no connection could be had. A cluster
/// client may send it to another node.
struct RedisNotSent: Error {
    let error: RedisError
}
