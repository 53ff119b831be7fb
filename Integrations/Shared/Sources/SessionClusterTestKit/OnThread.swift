import Foundation

/// Runs blocking test setup or teardown (starting redis-server, waiting for
/// replication nodes, stopping processes) on a thread of its own, so it
/// never blocks Swift's cooperative pool, which the tests' servers and
/// clients need meanwhile (on a 2-core machine it has 2 threads).
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}
