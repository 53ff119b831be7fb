import ServiceLifecycle

/// The Redis client as a swift-service-lifecycle `Service`: add it to the application's
/// `ServiceGroup` before the HTTP server; on the group's graceful shutdown (or cancellation)
/// it closes its connections, after the server stopped.
extension RedisClient: Service {
    public func run() async throws {
        try? await gracefulShutdown()
        close()
    }
}
