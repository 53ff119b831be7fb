import ArgumentParser
import Logging
import SessionClusterNodeKit
import SessionCore
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
        // Vapor's own command line is not used: our options were parsed above. Nor is its
        // `serve` command, which stops the server at once on SIGTERM/SIGINT: the signals
        // are ours, so that the node is a lame duck first.
        let signals = TerminationSignals()
        let lameDuck = LameDuck(delayMillis: options.drainDelayMs)
        let app = try await Application.make(Environment(name: "production", arguments: ["vapor-node"]))
        app.logger = logger
        app.http.server.configuration.hostname = options.host
        app.http.server.configuration.port = options.port
        let node: DemoNodeRoutes
        do {
            node = try DemoNodeRoutes(
                app: app, nodeID: options.nodeId, store: stores.store, executor: stores.executor, sessions: sessions,
                healthProblem: { stores.healthProblem() }, lameDuck: lameDuck, logger: logger)
        } catch {
            try? await app.asyncShutdown()
            await stores.shutdown()
            throw error
        }
        stores.start()
        do {
            try await app.asyncBoot()
            try await app.server.start(address: .hostname(options.host, port: options.port))
        } catch {
            await app.server.shutdown()
            try? await node.shutdown()
            try? await app.asyncShutdown()
            await stores.shutdown()
            throw error
        }
        logger.info(
            "vapor node listening",
            metadata: ["node": "\(options.nodeId)", "port": "\(options.port)", "store": "\(options.store.rawValue)"])
        let signal = await signals.next()
        logger.info("signal received, draining", metadata: ["signal": "\(signal)", "drain_delay_ms": "\(lameDuck.delayMillis)"])
        await lameDuck.drain()  // the server keeps listening and serving meanwhile
        logger.info("drained, stopping the server")
        await app.server.shutdown()  // stops accepting, finishes in-flight requests
        try await node.shutdown()
        try await app.asyncShutdown()
        await stores.shutdown()
    }
}
