import Foundation
import SessionCore
import Synchronization

/// A store wrapper whose calls for chosen sessions block their thread for a
/// while (`delayMillis`, or until `release()`), as a Redis or a peer that
/// stalls would: for tests that show a slow store does not stall the
/// requests of other sessions.
public final class SlowSessionStore: WrappingSessionStore {
    /// The store underneath.
    public let base: any SessionStore & IdempotencyStore
    /// How long each call for a slow session blocks its thread.
    public let delayMillis: Int
    private let slowIDs = Mutex<Set<SessionID>>([])
    private let slowCalls = Atomic<Int>(0)
    private let blocked = Atomic<Int>(0)
    private let released = Atomic<Bool>(false)

    /// Wraps `base`; calls for sessions marked slow block `delayMillis` first.
    public init(_ base: any SessionStore & IdempotencyStore, delayMillis: Int = 500) {
        self.base = base
        self.delayMillis = delayMillis
    }

    /// Makes every call for `id` slow from now on.
    public func makeSlow(_ id: SessionID) { slowIDs.withLock { _ = $0.insert(id) } }

    /// How many calls were delayed so far.
    public var delayedCalls: Int { slowCalls.load(ordering: .relaxed) }

    /// How many calls are blocked right now.
    public var blockedCalls: Int { blocked.load(ordering: .relaxed) }

    /// Ends the blocking of current and later calls early.
    public func release() { released.store(true, ordering: .relaxed) }

    private func delay(_ id: SessionID) {
        guard slowIDs.withLock({ $0.contains(id) }) else { return }
        slowCalls.add(1, ordering: .relaxed)
        blocked.add(1, ordering: .relaxed)
        defer { blocked.subtract(1, ordering: .relaxed) }
        // Blocks the calling thread, like a slow network call.
        let deadline = Date().addingTimeInterval(Double(delayMillis) / 1000)
        while !released.load(ordering: .relaxed) && Date() < deadline { usleep(2_000) }
    }

    public func around<T>(_ operation: String, session id: SessionID, _ body: () throws -> T) throws -> T {
        delay(id)
        return try body()
    }
}
