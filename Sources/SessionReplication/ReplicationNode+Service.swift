import SessionCore
import ServiceLifecycle

/// A replication node as a swift-service-lifecycle `Service`: add it to the application's
/// `ServiceGroup` before the HTTP server, so the group stops the server first and the node
/// after it (in reverse order). `run()` starts the node (unless started), waits for the
/// group's graceful shutdown (or cancellation), then shuts the node down.
extension ReplicationNode: Service {
    public func run() async throws {
        start()
        try? await gracefulShutdown()
        shutdown()
    }
}

extension ReplicatedSessionStore: SweepingStore {}
