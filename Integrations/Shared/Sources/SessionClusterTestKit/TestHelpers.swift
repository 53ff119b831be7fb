import Foundation
import SessionClusterAsync
import SessionCore
import Synchronization

/// A browser's cookies: what `Set-Cookie` headers set, sent back on every request.
public final class CookieJar: Sendable {
    private let cookies = Mutex<[String: String]>([:])

    /// A jar holding `initial`.
    public init(_ initial: [String: String] = [:]) { cookies.withLock { $0 = initial } }

    /// A cookie's value.
    public subscript(name: String) -> String? { cookies.withLock { $0[name] } }

    /// The `Cookie` header for the next request ("" when empty).
    public var header: String {
        cookies.withLock { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "; ") }
    }

    /// An independent copy.
    public func copy() -> CookieJar { CookieJar(cookies.withLock { $0 }) }

    /// Applies a response's `Set-Cookie` header values: set, replace, or
    /// delete (`Max-Age=0`, or an `Expires` date that has passed).
    public func update(setCookies: [String]) {
        for header in setCookies {
            let pair = header.split(separator: ";", maxSplits: 1)[0]
            guard let eq = pair.firstIndex(of: "=") else { continue }
            let name = String(pair[..<eq]).trimmingCharacters(in: .whitespaces)
            let value = String(pair[pair.index(after: eq)...])
            let expired = header.contains("Max-Age=0") || Self.expiresInThePast(header)
            cookies.withLock { $0[name] = expired ? nil : value }
        }
    }

    /// Whether the cookie's `Expires` attribute is now or earlier.
    static func expiresInThePast(_ header: String) -> Bool {
        guard let range = header.range(of: "Expires=", options: .caseInsensitive) else { return false }
        let text = header[range.upperBound...].prefix { $0 != ";" }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: String(text)) else { return false }
        return date <= Date().addingTimeInterval(1)
    }
}

/// A JSON answer of the demo API.
public struct DemoAnswer: Decodable, Equatable, Sendable {
    /// The node that answered.
    public var node: String
    /// The session's counter.
    public var count: Int64
    /// The logged-in user, if any.
    public var user: String?

    /// An answer.
    public init(node: String, count: Int64, user: String? = nil) {
        self.node = node
        self.count = count
        self.user = user
    }
}

/// Which store a test runs against.
public enum StoreKind: String, CaseIterable, Sendable, CustomStringConvertible {
    /// `MemorySessionStore`: one store both "nodes" share.
    case memory
    /// `RedisSessionStore`: two clients of one Redis.
    case redis
    /// `ReplicatedSessionStore`: two nodes replicating over loopback.
    case replicated
    /// `RedisSessionStore`: two clients of the Redis Cluster of `$REDIS_CLUSTER_SEEDS`.
    case redisCluster

    public var description: String { rawValue }

    /// Every kind; `redisCluster` only when `$REDIS_CLUSTER_SEEDS` names a cluster
    /// (scripts/test.sh starts one and sets it).
    public static var allCases: [StoreKind] {
        [.memory, .redis, .replicated] + (TestStores.redisClusterSeeds == nil ? [] : [.redisCluster])
    }

    /// The stores (Redis ignores `clock`: it keeps time itself).
    public func make(expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system) throws -> TestStores {
        switch self {
        case .memory: TestStores.memory(expiry: expiry, clock: clock)
        case .redis: try TestStores.redis(expiry: expiry)
        case .replicated: try TestStores.replicated(expiry: expiry, clock: clock)
        case .redisCluster: try TestStores.redisCluster(expiry: expiry)
        }
    }
}

/// A small executor for one test, shut down after it.
public func withExecutor<T>(threads: Int = 8, _ body: (BlockingExecutor) async throws -> T) async throws -> T {
    let executor = BlockingExecutor(threads: threads)
    do {
        let result = try await body(executor)
        try await executor.shutdown()
        return result
    } catch {
        try? await executor.shutdown()
        throw error
    }
}

/// Runs `body` with the stores, then shuts them down (also on failure).
/// Setup and teardown block, so they run on a thread of their own.
public func withStores<T>(
    _ kind: StoreKind, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
    _ body: (TestStores) async throws -> T
) async throws -> T {
    let stores = try await onThread { try kind.make(expiry: expiry, clock: clock) }
    do {
        let result = try await body(stores)
        try await onThread { stores.shutdown() }
        return result
    } catch {
        _ = try? await onThread { stores.shutdown() }
        throw error
    }
}

/// Polls `check` (every 10 ms, up to `seconds`) without blocking a thread.
public func eventually(seconds: Double = 10, _ check: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if check() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return check()
}

/// Names in the order their requests completed.
public final class CompletionLog: Sendable {
    private let names = Mutex<[String]>([])
    /// An empty log.
    public init() {}
    /// Notes that `name` completed.
    public func append(_ name: String) { names.withLock { $0.append(name) } }
    /// The names so far, in order.
    public var entries: [String] { names.withLock { $0 } }
}

/// The body of the demo API's `GET /api/sessions`.
public struct UserSessionsAnswer: Decodable, Sendable {
    /// One session of the user.
    public struct Entry: Decodable, Sendable, Equatable {
        public var handle: String
        public var node: String?
        public var client: String?
        public var current: Bool
    }
    public var user: String
    public var sessions: [Entry]
}
