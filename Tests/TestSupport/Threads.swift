import Foundation

/// Starts `count` threads running `body(i)` at once; the group is done when they all returned.
public func startThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> DispatchGroup {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        Thread {
            body(i)
            group.leave()
        }.start()
    }
    return group
}

/// Runs `body(i)` for i in 0..<count, each on its own thread, all at once.
/// False when they have not all finished within `seconds`.
public func onThreads(_ count: Int, seconds: Double, _ body: @escaping @Sendable (Int) -> Void) -> Bool {
    startThreads(count, body).wait(timeout: .now() + seconds) == .success
}
