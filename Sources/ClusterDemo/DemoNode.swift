#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import SessionRedis
import SessionReplication
import Synchronization
import SystemSupport

/// Where a node keeps its sessions.
public enum SessionStrategy: String, Sendable, CaseIterable {
    /// In this node's memory only: sessions break under round robin (the baseline).
    case local
    /// In Redis: any node serves any session; nodes keep nothing.
    case redis
    /// In every node's memory, each change replicated to every peer.
    case replicate

    /// Handler threads when not configured: 0 runs handlers on the event loops.
    public var defaultHandlerThreads: Int {
        switch self {
        case .local: 0
        case .redis: 64  // Redis calls block
        case .replicate: 64  // sync writes wait for peers; reads may wait for a newer copy
        }
    }
}

/// The application every cluster node serves: a session counter, login and
/// logout, health and metrics. Every response names the node in `X-Served-By`.
public final class DemoNode: Sendable {
    public let configuration: DemoNodeConfiguration
    public let metrics = NodeMetrics()
    public let server: HTTPServer
    let memoryStore: MemorySessionStore?
    let redisClient: RedisClient?
    /// The replication node, for the `replicate` strategy.
    public let replication: ReplicationNode?
    private let ready = ReadinessFlag()

    /// Throws when the `replicate` strategy's port or secret is unusable.
    public init(configuration: DemoNodeConfiguration, logger: Logger) throws {
        self.configuration = configuration
        let base: any SessionStore & IdempotencyStore
        var exclusive: (any SessionRequestLock)? = nil
        var memoryStore: MemorySessionStore? = nil
        var redisClient: RedisClient? = nil
        var replication: ReplicationNode? = nil
        switch configuration.strategy {
        case .local:
            let memory = MemorySessionStore(expiry: configuration.expiry, maxSessions: configuration.maxSessions)
            memory.startSweeper(intervalMillis: 30_000)
            memoryStore = memory
            base = memory
        case .redis:
            // Nothing is contacted here: a node starts while Redis is down and recovers when it returns.
            let client = RedisClient(configuration: configuration.redis ?? RedisConfiguration(), logger: logger)
            redisClient = client
            base = RedisSessionStore(client: client, expiry: configuration.expiry, logger: logger)
            if configuration.exclusiveSessions { exclusive = RedisSessionLock(client: client, logger: logger) }
        case .replicate:
            guard let settings = configuration.replication else {
                throw ReplicationConfigurationError("the replicate strategy needs peers and a cluster secret")
            }
            let store = ReplicatedSessionStore(
                node: settings.nodeID, expiry: configuration.expiry, maxSessions: configuration.maxSessions)
            store.startSweeper(intervalMillis: 30_000)
            replication = try ReplicationNode(store: store, configuration: settings, logger: logger)
            base = store
        }
        self.memoryStore = memoryStore
        self.redisClient = redisClient
        self.replication = replication
        let store = InstrumentedSessionStore(base, metrics: metrics)
        let sessionConfiguration = try SessionConfiguration(signingKeys: configuration.cookieSecrets, exclusive: exclusive)
        let sessions = SessionMiddleware(store: store, configuration: sessionConfiguration, logger: logger)
        let idempotency = IdempotencyMiddleware(store: store, sessions: sessionConfiguration, logger: logger)

        var router = Router()
        let nodeID = configuration.nodeID
        let readyFlag = ready
        let metrics = metrics
        let memory = memoryStore
        let redis = redisClient
        let replicated = replication
        let healthyBody = Array("{\"status\":\"ok\",\"node\":\(jsonQuoted(nodeID))}".utf8)  // built once
        router.get("/healthz") { _ in
            if readyFlag.isDraining {
                return .json("{\"status\":\"draining\",\"node\":\(jsonQuoted(nodeID))}", status: 503)
            }
            guard readyFlag.isReady else {
                return .json("{\"status\":\"starting\",\"node\":\(jsonQuoted(nodeID))}", status: 503)
            }
            if let replicated, !replicated.isReady {
                let status = replicated.isRejoining ? "rejoining" : "starting"
                return .json(
                    "{\"status\":\"\(status)\",\"node\":\(jsonQuoted(nodeID)),\"reason\":\(jsonQuoted(replicated.store.unavailableReason))}",
                    status: 503)
            }
            if let redis, let problem = redis.healthProblem() {
                return .json(
                    "{\"status\":\"unavailable\",\"node\":\(jsonQuoted(nodeID)),\"reason\":\(jsonQuoted(problem))}",
                    status: 503)
            }
            return HTTPResponse(status: 200, headers: ["Content-Type": "application/json"], body: healthyBody)
        }
        router.get("/api/session") { request in
            let session = try request.session()
            return .json(try Self.sessionJSON(node: nodeID, session: session))
        }
        router.post("/api/counter") { request in
            let session = try request.session()
            let count = try session.increment("count")
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"count\":\(count)}")
        }
        router.post("/api/login") { request in
            struct Login: Decodable { var user: String }
            guard let login = try? JSONDecoder().decode(Login.self, from: Data(request.body)) else {
                throw HTTPError.badRequest("expected a JSON body {\"user\": \"name\"}")
            }
            let user = String(login.user.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
            guard !user.isEmpty, user.utf8.count <= 64 else {
                throw HTTPError.badRequest("user must be 1 to 64 bytes")
            }
            let session = try request.session()
            try session.regenerateID()
            try session.set("user", user)
            return .json(try Self.sessionJSON(node: nodeID, session: session))
        }
        router.post("/api/logout") { request in
            try request.session().invalidate()
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"count\":0,\"user\":null}")
        }
        router.get("/metrics") { _ in
            HTTPResponse(
                status: 200, contentType: "text/plain; version=0.0.4",
                body: metrics.render(
                    node: nodeID, sessions: memory?.count ?? replicated?.store.count,
                    idempotency: memory?.idempotencyStats ?? replicated?.store.idempotencyStats)
                    + (replicated?.renderMetrics() ?? ""))
        }
        router.get("/") { _ in
            HTTPResponse(status: 200, contentType: "text/html; charset=utf-8", body: DemoPage.html)
        }

        server = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: configuration.host, port: configuration.port,
                handlerThreads: configuration.handlerThreads ?? configuration.strategy.defaultHandlerThreads),
            logger: logger,
            middleware: [ServedByMiddleware(nodeID: nodeID, metrics: metrics), idempotency, sessions],
            responder: router.responder)
    }

    static func sessionJSON(node: String, session: Session) throws -> String {
        let count = try session.get("count", as: Int64.self) ?? 0
        let user = try session.get("user", as: String.self).map(jsonQuoted) ?? "null"
        return "{\"node\":\(jsonQuoted(node)),\"count\":\(count),\"user\":\(user)}"
    }

    /// Starts serving; `/healthz` answers 200 from then on (with `replicate`:
    /// once the state transfer from a peer is done).
    public func start() throws {
        replication?.start()
        try server.start()
        ready.set(true)
    }

    /// The bound port.
    public var port: Int { server.port }

    /// Graceful stop. With a `drainDelayMillis` the node is first a lame duck:
    /// `/healthz` answers 503 `draining` and every response closes its connection,
    /// until no connection is left open (the balancer took the node out and closed
    /// its pooled connections) or the delay has passed; then in-flight requests
    /// finish and the node stops (see `HTTPServer.drainAndShutdown`).
    public func shutdown(drainDelayMillis: Int = 0) {
        ready.setDraining()
        if drainDelayMillis > 0 {
            server.drainAndShutdown(delayMillis: drainDelayMillis)
        } else {
            server.shutdown()
        }
        ready.set(false)
        replication?.shutdown()
        replication?.store.stopSweeper()
        memoryStore?.stopSweeper()
    }
}

/// Adds `X-Served-By` to every response and records request metrics.
struct ServedByMiddleware: HTTPMiddleware {
    let nodeID: String
    let metrics: NodeMetrics

    func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
        let start = monotonicNanos()
        var response: HTTPResponse
        do {
            response = try next(request)
        } catch let error as HTTPError {
            response = error.response
        }
        response.headers.replaceOrAdd(name: "X-Served-By", value: nodeID)
        metrics.recordRequest(
            method: request.method, route: request.path, status: response.status, nanos: monotonicNanos() - start)
        return response
    }
}

/// Whether the node answers `/healthz` with 200.
final class ReadinessFlag: Sendable {
    private let value = Atomic<Bool>(false)
    private let draining = Atomic<Bool>(false)
    var isReady: Bool { value.load(ordering: .relaxed) }
    /// Set for good once a graceful stop begins.
    var isDraining: Bool { draining.load(ordering: .relaxed) }
    func set(_ ready: Bool) { value.store(ready, ordering: .relaxed) }
    func setDraining() { draining.store(true, ordering: .relaxed) }
}
