import Foundation
import SystemSupport

/// Runs `body(i)` for i in 0..<count, each on its own thread, all at once.
/// False when they have not all finished within `seconds`.
public func onThreads(_ count: Int, seconds: Double, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    startThreads(count, body).wait(timeout: .now() + seconds) == .success
}
