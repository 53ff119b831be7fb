import ArgumentParser
import Logging
import SessionClusterNodeKit
import SessionMiddleware
import Vapor

/// The demo node on Vapor: the same endpoints as `session-cluster node`,
/// runnable behind `session-cluster proxy`.
///
/// ```sh
/// vapor-node --port 9201 --node-id v1 --store redis --redis redis://127.0.0.1:6379/0
/// ```
@main
struct VaporNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vapor-node",
        abstract: "A SessionCluster demo node on Vapor 4 (GET /healthz, GET /api/session, POST /api/counter, /api/login, /api/logout).")

    @OptionGroup var options: ExampleNodeOptions

    func run() async throws {
        let logger = options.makeLogger(label: "vapor-node.\(options.nodeId)")
        let stores = try ExampleNodeStores(options: options, logger: logger)
        let sessions = try SessionConfiguration(signingKeys: options.cookieSecrets(), exclusive: stores.exclusiveLock)
        // Vapor's own command line is not used: our options were parsed above.
        let app = try await Application.make(Environment(name: "production", arguments: ["vapor-node"]))
        app.logger = logger
        app.http.server.configuration.hostname = options.host
        app.http.server.configuration.port = options.port
        let node = try DemoNodeRoutes(
            app: app, nodeID: options.nodeId, store: stores.store, executor: stores.executor, sessions: sessions,
            healthProblem: { stores.healthProblem() }, logger: logger)
        stores.start()
        do {
            try await app.execute()  // `serve`: SIGTERM/SIGINT stop accepting and finish in-flight requests
        } catch {
            try? await node.shutdown()
            try? await app.asyncShutdown()
            await stores.shutdown()
            throw error
        }
        try await node.shutdown()
        try await app.asyncShutdown()
        await stores.shutdown()
    }
}
