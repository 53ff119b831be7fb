import ArgumentParser
import Hummingbird
import Logging
import ServiceLifecycle
import SessionClusterNodeKit
import SessionCore

/// The demo node on Hummingbird: the same endpoints as `session-cluster node`,
/// runnable behind `session-cluster proxy`.
///
/// ```sh
/// hummingbird-node --port 9101 --node-id hb1 --store redis --redis redis://127.0.0.1:6379/0
/// ```
@main
struct HummingbirdNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hummingbird-node",
        abstract: "A SessionCluster demo node on Hummingbird 2 (GET /healthz, GET /api/session, POST /api/counter, /api/login, /api/logout).")

    @OptionGroup var options: ExampleNodeOptions

    func run() async throws {
        let logger = options.makeLogger(label: "hummingbird-node.\(options.nodeId)")
        let stores = try ExampleNodeStores(options: options, logger: logger)
        let sessions = try SessionConfiguration(signingKeys: options.cookieSecrets(), exclusive: stores.exclusiveLock)
        let lameDuck = LameDuck(delayMillis: options.drainDelayMs)
        let node = DemoNodeApp(
            nodeID: options.nodeId, store: stores.store, executor: stores.executor, sessions: sessions,
            healthProblem: { stores.healthProblem() }, lameDuck: lameDuck, logger: logger)
        let app = Application(
            router: node.router,
            server: .http1(configuration: .init(additionalChannelHandlers: [CloseAfterConnectionCloseHandler()])),
            configuration: ApplicationConfiguration(address: .hostname(options.host, port: options.port)),
            logger: logger)
        logger.info(
            "hummingbird node listening",
            metadata: ["node": "\(options.nodeId)", "port": "\(options.port)", "store": "\(options.store.rawValue)"])
        // SIGTERM/SIGINT: the group shuts its services down in reverse order, each after
        // the previous one finished: first the lame duck (--drain-delay-ms, the app serving
        // on), then the app (stops accepting, finishes in-flight requests), then the store's
        // services (the replication node or the Redis client, the sweeper), which it started.
        let group = ServiceGroup(
            services: stores.services + [app, LameDuckService(lameDuck: lameDuck, logger: logger)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
        try await node.shutdown()
        try? await stores.executor.shutdown()
    }
}
