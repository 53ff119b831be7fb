import ArgumentParser
import Hummingbird
import Logging
import SessionClusterNodeKit
import SessionMiddleware

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
        let node = DemoNodeApp(
            nodeID: options.nodeId, store: stores.store, executor: stores.executor, sessions: sessions,
            healthProblem: { stores.healthProblem() }, logger: logger)
        let app = Application(
            router: node.router,
            configuration: ApplicationConfiguration(address: .hostname(options.host, port: options.port)),
            logger: logger)
        stores.start()
        logger.info(
            "hummingbird node listening",
            metadata: ["node": "\(options.nodeId)", "port": "\(options.port)", "store": "\(options.store.rawValue)"])
        try await app.runService()  // SIGTERM/SIGINT: stops accepting, finishes in-flight requests
        try await node.shutdown()
        await stores.shutdown()
    }
}
