import ServiceLifecycle

/// A store that removes its expired sessions on a timer of its own.
public protocol SweepingStore: Sendable {
    /// Starts removing expired sessions every `intervalMillis`.
    func startSweeper(intervalMillis: Int)
    /// Stops the timer.
    func stopSweeper()
}

extension MemorySessionStore: SweepingStore {}

/// A store's sweeper as a swift-service-lifecycle `Service`: add it to the application's
/// `ServiceGroup`; it sweeps until the group shuts down gracefully (or is cancelled).
public struct SweeperService: Service {
    public let store: any SweepingStore
    public let intervalMillis: Int

    public init(store: any SweepingStore, intervalMillis: Int = 60_000) {
        self.store = store
        self.intervalMillis = intervalMillis
    }

    public func run() async throws {
        store.startSweeper(intervalMillis: intervalMillis)
        defer { store.stopSweeper() }
        try? await gracefulShutdown()
    }
}
