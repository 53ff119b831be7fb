import Foundation

/// Runs `body(i)` for i in 0..<count, each on its own thread, all at once.
/// False when they have not all finished within `seconds`.
public func onThreads(_ count: Int, seconds: Double, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        Thread {
            body(i)
            group.leave()
        }.start()
    }
    return group.wait(timeout: .now() + seconds) == .success
}
