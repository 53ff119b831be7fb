#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import ClusterLocks
import CoreMetrics
import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import SessionRedis
import SessionReplication
import Synchronization
import SystemSupport

import class Prometheus.PrometheusCollectorRegistry
import struct Prometheus.PrometheusMetricsFactory

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
    public let metrics: NodeMetrics
    /// What `/metrics` renders: the node's own registry; nil when the node was given a factory.
    let metricsRegistry: PrometheusCollectorRegistry?
    /// With a factory of one's own: passes the levels (sessions held...) on every few seconds.
    private let metricsRefresh = RepeatingTimer()
    public let server: HTTPServer
    let memoryStore: MemorySessionStore?
    let redisClient: RedisClient?
    /// The Redis store, whose expiry sweeper runs while the node does.
    let redisStore: RedisSessionStore?
    /// The replication node, for the `replicate` strategy.
    public let replication: ReplicationNode?
    /// The session events this node delivered (the store's listener).
    public let events: NodeEvents
    private let ready = ReadinessFlag()

    /// Throws when the `replicate` strategy's port or secret is unusable.
    ///
    /// `metricsFactory` receives the node's series through swift-metrics (and the replication
    /// node's), e.g. `MetricsSystem.factory` after bootstrapping a backend of one's own: requests
    /// are counted as they are served, levels such as sessions held passed on every few seconds,
    /// and `/metrics` answers 404. A `PrometheusMetricsFactory` of one's own wants
    /// `NodeMetrics.durationBuckets` for the histograms to keep their buckets. Nil keeps the
    /// series in a Prometheus registry of the node's own, which `/metrics` renders.
    public init(configuration: DemoNodeConfiguration, logger: Logger, metricsFactory: (any MetricsFactory)? = nil) throws {
        self.configuration = configuration
        let destination = MetricsDestination(metricsFactory) { prometheus in
            for name in NodeMetrics.durationMetricNames {
                prometheus.durationHistogramBuckets[name] = NodeMetrics.durationBuckets
            }
        }
        let factory = destination.factory
        metricsRegistry = destination.registry
        metrics = NodeMetrics(node: configuration.nodeID, factory: factory)
        let base: any SessionStore & IdempotencyStore
        var exclusive: (any SessionRequestLock)? = nil
        var memoryStore: MemorySessionStore? = nil
        var redisClient: RedisClient? = nil
        var replication: ReplicationNode? = nil
        switch configuration.strategy {
        case .local:
            let memory = MemorySessionStore(
                expiry: configuration.expiry, maxSessions: configuration.maxSessions,
                principalLimit: configuration.principalLimit, nodeName: configuration.nodeID)
            memory.startSweeper(intervalMillis: configuration.sweepIntervalMillis)
            memoryStore = memory
            base = memory
        case .redis:
            // Nothing is contacted here: a node starts while Redis is down and recovers when it returns.
            let client = RedisClient(configuration: configuration.redis ?? RedisConfiguration(), logger: logger)
            redisClient = client
            base = RedisSessionStore(
                client: client, expiry: configuration.expiry, principalLimit: configuration.principalLimit,
                nodeName: configuration.nodeID, logger: logger)
            if configuration.exclusiveSessions && configuration.lockBackend == .redis {
                exclusive = DistributedSessionLock.redis(
                    client: client, waitMillis: configuration.sessionLockWaitMillis, logger: logger)
            }
        case .replicate:
            guard let settings = configuration.replication else {
                throw ReplicationConfigurationError("the replicate strategy needs peers and a cluster secret")
            }
            let store = ReplicatedSessionStore(
                node: settings.nodeID, expiry: configuration.expiry, maxSessions: configuration.maxSessions,
                principalLimit: configuration.principalLimit, nodeName: configuration.nodeID)
            store.startSweeper(intervalMillis: configuration.sweepIntervalMillis)
            replication = try ReplicationNode(
                store: store, configuration: settings, logger: logger, metricsFactory: factory)
            base = store
        }
        self.memoryStore = memoryStore
        self.redisClient = redisClient
        self.replication = replication
        let events = NodeEvents(logger: logger, metrics: metrics)
        self.events = events
        if let source = base as? any SessionEventSource { source.events.current = events }
        redisStore = base as? RedisSessionStore
        redisStore?.startExpirySweeper(intervalMillis: configuration.sweepIntervalMillis)
        let store = InstrumentedSessionStore(base, metrics: metrics)
        if configuration.exclusiveSessions && configuration.lockBackend != .redis {
            // In a table, sequence or root node of its own, made on first use: the node starts while the service is down.
            let service = try configuration.lockBackend.makeService(
                .init(postgres: configuration.postgres, zookeeper: configuration.zookeeper), namespace: "session_locks",
                logger: logger)
            exclusive = DistributedSessionLock(
                lock: DistributedLock(service: service, logger: logger), waitMillis: configuration.sessionLockWaitMillis,
                logger: logger)
        }
        let sessionConfiguration = try SessionConfiguration(signingKeys: configuration.cookieSecrets, exclusive: exclusive)
        let sessions = SessionMiddleware(store: store, configuration: sessionConfiguration, logger: logger)
        let idempotency = IdempotencyMiddleware(store: store, sessions: sessionConfiguration, logger: logger)

        // Two routers: the session API behind the idempotency and session middleware; health,
        // metrics and the page in front of it, so that a health check never reads a cookie,
        // takes a session lock or sets up a session.
        var router = Router()
        var api = Router()
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
        api.get("/api/session") { request in
            let session = try request.session()
            return .json(try Self.sessionJSON(node: nodeID, session: session))
        }
        api.post("/api/counter") { request in
            let session = try request.session()
            let count = try session.increment("count")
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"count\":\(count)}")
        }
        api.post("/api/login") { request in
            struct Login: Decodable { var user: String }
            guard let login = try? JSONDecoder().decode(Login.self, from: Data(request.body)) else {
                throw HTTPError.badRequest("expected a JSON body {\"user\": \"name\"}")
            }
            let user = String(login.user.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
            guard !user.isEmpty, user.utf8.count <= 64 else {
                throw HTTPError.badRequest("user must be 1 to 64 bytes")
            }
            let session = try request.session()
            try session.logIn(as: user, client: request.headers["User-Agent"] ?? "unknown client")
            return .json(try Self.sessionJSON(node: nodeID, session: session))
        }
        Self.routeUserSessions(&api, nodeID: nodeID, metrics: metrics)
        api.get("/api/events") { request in
            let answer = PrincipalSessionsAnswer.events(try request.session(), recent: events.recent, node: nodeID)
            return .json(answer.body, status: answer.status)
        }
        api.post("/api/logout") { request in
            try request.session().invalidate()
            return .json("{\"node\":\(jsonQuoted(nodeID)),\"count\":0,\"user\":null}")
        }
        let registry = metricsRegistry
        router.get("/metrics") { _ in
            guard let registry else {
                return .error(
                    status: 404, code: "metrics_elsewhere",
                    message: "this node sends its metrics to the MetricsFactory it was given, not to this endpoint")
            }
            Self.updateMetricLevels(metrics, memory: memory, replicated: replicated)
            replicated?.updateMetrics()
            var text: [UInt8] = []
            registry.emit(into: &text)
            return HTTPResponse(status: 200, headers: ["Content-Type": "text/plain; version=0.0.4"], body: text)
        }
        router.get("/") { _ in
            HTTPResponse(status: 200, contentType: "text/html; charset=utf-8", body: DemoPage.html)
        }

        router.fallback = MiddlewareChain([idempotency, sessions], responder: api.responder).asResponder

        server = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: configuration.host, port: configuration.port,
                handlerThreads: configuration.handlerThreads
                    ?? (configuration.exclusiveSessions ? 64 : configuration.strategy.defaultHandlerThreads)),
            logger: logger,
            middleware: [ServedByMiddleware(nodeID: nodeID, metrics: metrics)],
            responder: router.responder)
    }

    /// Passes the levels read from the store (sessions held, idempotency records) on to `metrics`.
    static func updateMetricLevels(_ metrics: NodeMetrics, memory: MemorySessionStore?, replicated: ReplicationNode?) {
        metrics.update(
            sessions: memory?.count ?? replicated?.store.count,
            idempotency: memory?.idempotencyStats ?? replicated?.store.idempotencyStats)
    }

    static func sessionJSON(node: String, session: Session) throws -> String {
        let count = try session.get("count", as: Int64.self) ?? 0
        let user = session.principal.map(jsonQuoted) ?? "null"
        return "{\"node\":\(jsonQuoted(node)),\"count\":\(count),\"user\":\(user)}"
    }

    /// Starts serving; `/healthz` answers 200 from then on (with `replicate`:
    /// once the state transfer from a peer is done).
    public func start() throws {
        replication?.start()
        try server.start()
        ready.set(true)
        if metricsRegistry == nil {
            metricsRefresh.start(label: "node-metrics", intervalMillis: NodeMetrics.refreshMillis) { [weak self] in
                guard let self else { return }
                Self.updateMetricLevels(metrics, memory: memoryStore, replicated: replication)
            }
        }
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
        metricsRefresh.stop()
        replication?.shutdown()
        replication?.store.stopSweeper()
        memoryStore?.stopSweeper()
        redisStore?.stopExpirySweeper()
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
