import Foundation
import Logging
import SessionCore
import SessionRedis

/// The redis-server that scripts/test.sh started, from `REDIS_URL`.
enum TestRedis {
    static let url = ProcessInfo.processInfo.environment["REDIS_URL"]
    static let available = url != nil

    static func configuration(poolSize: Int = 8, commandTimeoutMillis: Int = 1000) throws -> RedisConfiguration {
        var configuration = try RedisConfiguration(url: url ?? "redis://127.0.0.1:6379")
        configuration.poolSize = poolSize
        configuration.commandTimeoutMillis = commandTimeoutMillis
        return configuration
    }

    static func client(poolSize: Int = 8) throws -> RedisClient {
        RedisClient(configuration: try configuration(poolSize: poolSize), logger: quietLogger())
    }

    /// A key prefix no other test uses.
    static func uniquePrefix() -> String { "test:\(UUID().uuidString.prefix(8)):" }

    static func quietLogger() -> Logger {
        var logger = Logger(label: "redis-test")
        logger.logLevel = .critical
        return logger
    }
}
