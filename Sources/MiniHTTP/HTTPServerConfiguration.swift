#if canImport(Glibc)
import Glibc
#endif

/// Settings of an `HTTPServer`.
public struct HTTPServerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port; read the result from `HTTPServer.port`.
    public var port: Int
    /// Event loop threads (epoll): they accept, read, parse and write.
    public var eventLoops: Int
    /// Threads that run handlers, for handlers that block (network stores).
    /// 0 runs handlers on the event loop itself: fastest, for handlers that never block.
    public var handlerThreads: Int
    /// Open connections at most; beyond this, new ones get 503 and are closed.
    public var maxConnections: Int
    public var limits: HTTPParserLimits
    /// From the first byte of a request to the end of its headers (408 after).
    public var headerTimeoutMillis: Int
    /// From the end of a request's head to the end of its body, however its
    /// bytes trickle in (408 after, and the connection closes).
    public var bodyTimeoutMillis: Int
    /// Longest wait for the next request on a kept-alive connection.
    public var idleTimeoutMillis: Int
    /// Longest wait for a write to make progress.
    public var writeTimeoutMillis: Int
    /// Longest wait for in-flight requests at shutdown.
    public var shutdownGraceMillis: Int

    public init(
        host: String = "127.0.0.1", port: Int = 8080, eventLoops: Int = HTTPServerConfiguration.defaultEventLoops,
        handlerThreads: Int = 64, maxConnections: Int = 10_000, limits: HTTPParserLimits = HTTPParserLimits(),
        headerTimeoutMillis: Int = 10_000, bodyTimeoutMillis: Int = 30_000, idleTimeoutMillis: Int = 60_000,
        writeTimeoutMillis: Int = 30_000, shutdownGraceMillis: Int = 30_000
    ) {
        self.host = host
        self.port = port
        self.eventLoops = eventLoops
        self.handlerThreads = handlerThreads
        self.maxConnections = maxConnections
        self.limits = limits
        self.headerTimeoutMillis = headerTimeoutMillis
        self.bodyTimeoutMillis = bodyTimeoutMillis
        self.idleTimeoutMillis = idleTimeoutMillis
        self.writeTimeoutMillis = writeTimeoutMillis
        self.shutdownGraceMillis = shutdownGraceMillis
    }

    /// One loop per core.
    public static var defaultEventLoops: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}
