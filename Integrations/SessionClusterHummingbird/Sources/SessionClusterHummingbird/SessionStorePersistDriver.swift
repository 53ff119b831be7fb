#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import SessionClusterAsync
import SessionCore

/// A Hummingbird `PersistDriver` backed by a SessionCluster store: memory,
/// Redis (`RedisSessionStore`) or replicated between nodes
/// (`ReplicatedSessionStore`). An app that keeps its sessions through
/// hummingbird-auth's `SessionMiddleware` (or anything else on
/// `PersistDriver`) moves them to a cluster by changing the driver:
///
/// ```swift
/// // let persist = MemoryPersistDriver()
/// let persist = SessionStorePersistDriver(store: RedisSessionStore(client: client, logger: logger))
/// router.add(middleware: SessionMiddleware(storage: persist))
/// ```
///
/// The `PersistDriver` contract, as `MemoryPersistDriver` and the Valkey
/// driver keep it:
/// - `create` on a key that holds a live value throws `PersistError.duplicate`
///   (atomic on every store; on the replicated store, two nodes creating one
///   key at the same instant may both succeed, as with any write conflict there);
/// - `set` with `expires: nil` keeps the key's current expiry (only the value
///   is written); a new or expired key then gets no expiry of its own;
/// - `getWithTTL` returns the time left: the lesser of the key's own expiry
///   and the store's (`SessionExpiry`: idle since last use, absolute age);
/// - `get` as a type the value does not decode to throws
///   `PersistError.invalidConversion`.
///
/// Values are stored as JSON (one session per key, see
/// `SessionKeyValueStore`), so `redis-cli HGETALL` shows them. Every store
/// call runs on a `BlockingExecutor`, never on an event loop. Choose the
/// store's idle timeout at least as long as the longest expiry you use (for
/// hummingbird-auth: its `defaultSessionExpiration`, 12 hours by default):
/// an entry not read or written for the idle timeout is gone.
public struct SessionStorePersistDriver: PersistDriver {
    /// The key/value layer over the store.
    public let entries: SessionKeyValueStore

    /// A driver over `store`.
    ///
    /// - Parameters:
    ///   - store: where entries live.
    ///   - executor: where the blocking store calls run (default: the shared 64-thread pool).
    ///   - clock: the clock of per-key expiry.
    ///   - namespace: prefixed to every key, so apps sharing a store do not meet.
    public init(
        store: any SessionStore, executor: BlockingExecutor = .shared, clock: SessionClock = .system,
        namespace: String = "persist:"
    ) {
        entries = SessionKeyValueStore(store: store, executor: executor, clock: clock, namespace: namespace)
    }

    public func create<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        guard try await entries.create(key: key, value: try Self.encode(value), expiresInMillis: expires.map(Self.millis))
        else { throw PersistError.duplicate }
    }

    public func set<Object: Codable & Sendable>(key: String, value: Object, expires: Duration?) async throws {
        try await entries.set(key: key, value: try Self.encode(value), expiresInMillis: expires.map(Self.millis))
    }

    public func get<Object: Codable & Sendable>(key: String, as object: Object.Type) async throws -> Object? {
        guard let entry = try await entries.get(key: key) else { return nil }
        return try Self.decode(entry.value, as: object)
    }

    public func getWithTTL<Object: Codable & Sendable>(key: String, as object: Object.Type) async throws
        -> (object: Object, ttl: Duration?)?
    {
        guard let entry = try await entries.get(key: key) else { return nil }
        return (try Self.decode(entry.value, as: object), .milliseconds(entry.ttlMillis))
    }

    public func remove(key: String) async throws {
        try await entries.remove(key: key)
    }

    static func encode<Object: Encodable>(_ value: Object) throws -> [UInt8] {
        Array(try JSONEncoder().encode(value))
    }

    static func decode<Object: Decodable>(_ bytes: [UInt8], as object: Object.Type) throws -> Object {
        do {
            return try JSONDecoder().decode(object, from: Data(bytes))
        } catch {
            throw PersistError.invalidConversion
        }
    }

    /// Whole milliseconds of a duration (negative ones count as 0).
    static func millis(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
