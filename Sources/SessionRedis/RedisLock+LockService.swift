import ClusterLocks

/// `RedisLock` as a `LockService`: `DistributedLock(service: redisLock, …)`
/// gives it reentrancy, keep-alive and `LockError`s. Redis failures are
/// `LockError(.unavailable)`.
extension RedisLock: LockService {
    public var kind: String { "redis" }

    public func acquire(_ name: String, holder: String, leaseMillis: Int, waitMillis: Int) throws -> LockGrant? {
        let lease = try unavailableOnFailure {
            try acquire(name, token: holder, ttlMillis: leaseMillis, timeoutMillis: waitMillis)
        }
        return lease.map { LockGrant(fencingToken: $0.fencingToken, expiresAt: $0.expiresAt) }
    }

    public func release(_ name: String, holder: String) throws -> Bool {
        try unavailableOnFailure { try release(name, token: holder) }
    }

    public func extend(_ name: String, holder: String, leaseMillis: Int) throws -> Bool {
        try unavailableOnFailure { try extend(name, token: holder, ttlMillis: leaseMillis) }
    }

    private func unavailableOnFailure<T>(_ call: () throws -> T) throws -> T {
        try LockError.unavailableOnFailure(of: RedisError.self, service: "Redis") {
            do {
                return try call()
            } catch let error as RedisError where error.code == .configuration {
                throw LockError(.invalidArgument, error.message)
            }
        }
    }
}
