import Dispatch
import Synchronization

/// Runs a task every so often on a private queue until stopped: the stores' sweepers.
public final class RepeatingTimer: Sendable {
    private let source = Mutex<(any DispatchSourceTimer)?>(nil)

    public init() {}

    /// Starts running `task` every `intervalMillis`; does nothing when already running.
    public func start(label: String, intervalMillis: Int, _ task: @escaping @Sendable () -> Void) {
        source.withLock { current in
            guard current == nil else { return }
            let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: label))
            timer.schedule(deadline: .now() + .milliseconds(intervalMillis), repeating: .milliseconds(intervalMillis))
            timer.setEventHandler(handler: task)
            timer.resume()
            current = timer
        }
    }

    public func stop() {
        source.withLock { current in
            current?.cancel()
            current = nil
        }
    }

    deinit { stop() }
}
