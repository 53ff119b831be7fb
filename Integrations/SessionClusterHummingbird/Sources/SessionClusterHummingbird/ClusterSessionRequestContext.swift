import Hummingbird
import NIOCore
import SessionClusterAsync
import SessionCore

/// What `ClusterSessionMiddleware` and `ClusterIdempotencyMiddleware` keep
/// in a request's context.
public struct ClusterSessionContextStorage: Sendable {
    /// The request's session handle, set by `ClusterSessionMiddleware`.
    public var session: RequestSession?
    /// The claimed `Idempotency-Key`, set by `ClusterIdempotencyMiddleware`.
    public var idempotency: IdempotencyTicket?

    /// Empty storage (no middleware has run yet).
    public init() {}
}

/// A request context that can carry a SessionCluster session. Conform your
/// own context by adding one stored property:
///
/// ```swift
/// struct AppContext: ClusterSessionRequestContext {
///     var coreContext: CoreRequestContextStorage
///     var clusterSessions = ClusterSessionContextStorage()
///     init(source: Source) { coreContext = .init(source: source) }
/// }
/// ```
public protocol ClusterSessionRequestContext: RequestContext {
    /// Filled in by the middleware; handlers use `session()`.
    var clusterSessions: ClusterSessionContextStorage { get set }
}

extension ClusterSessionRequestContext {
    /// This request's session, loaded from the store (off the event loop) on
    /// first use. Throws a 500 `SessionErrorAnswer` when
    /// `ClusterSessionMiddleware` is not installed in front of the handler,
    /// and `SessionStoreError` when the store fails (the middleware answers 503).
    public func session() async throws -> ClusterSession {
        guard let handle = clusterSessions.session else {
            throw SessionErrorAnswer(
                status: 500, code: "session_middleware_missing",
                message: "ClusterSessionMiddleware is not installed in front of this handler")
        }
        return try await handle.session()
    }
}

/// A ready-made context with a SessionCluster session and the peer's
/// address (for `X-Forwarded-Proto` from trusted balancers).
public struct BasicClusterSessionRequestContext: ClusterSessionRequestContext, RemoteAddressRequestContext {
    /// Hummingbird's core context.
    public var coreContext: CoreRequestContextStorage
    /// The session and idempotency state of the request.
    public var clusterSessions: ClusterSessionContextStorage
    /// The peer's address.
    public let remoteAddress: SocketAddress?

    /// A context for a request from `source`.
    public init(source: ApplicationRequestContextSource) {
        coreContext = CoreRequestContextStorage(source: source)
        clusterSessions = ClusterSessionContextStorage()
        remoteAddress = source.channel.remoteAddress
    }
}
