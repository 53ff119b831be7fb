import Foundation
import Synchronization
import SystemSupport

/// Runs `body(i)` for i in 0..<count, each on its own thread, all at once.
/// False when they have not all finished within `seconds`.
public func onThreads(_ count: Int, seconds: Double, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    startThreads(count, body).wait(timeout: .now() + seconds) == .success
}

/// A count that threads add to.
public final class Counter: Sendable {
    private let value = Mutex(0)
    public init() {}
    public func increment() { value.withLock { $0 += 1 } }
    public var current: Int { value.withLock { $0 } }
}
