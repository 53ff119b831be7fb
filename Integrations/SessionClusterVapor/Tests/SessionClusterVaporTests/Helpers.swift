import Foundation
import NIOCore
import SessionClusterAsync
import SessionClusterNodeKit
import SessionClusterTestKit
import SessionCore
import TestSupport
import Vapor
import VaporTesting

@testable import VaporNode

extension TestingApplicationTester {
    /// Sends a request with the jar's cookies, updates the jar from the answer.
    @discardableResult
    func call(
        _ method: HTTPMethod, _ path: String, jar: CookieJar, body: String? = nil, headers: HTTPHeaders = [:]
    ) async throws -> TestingHTTPResponse {
        var headers = headers
        let cookie = jar.header
        if !cookie.isEmpty { headers.replaceOrAdd(name: .cookie, value: cookie) }
        let response = try await performTest(
            request: TestingHTTPRequest(
                method: method, url: URI(path: path), headers: headers,
                body: ByteBuffer(string: body ?? "")))
        jar.update(setCookies: response.headers[.setCookie])
        return response
    }

    /// `call`, decoding the demo API's JSON (and failing on any other status than 200).
    func demo(
        _ method: HTTPMethod, _ path: String, jar: CookieJar, body: String? = nil, headers: HTTPHeaders = [:]
    ) async throws -> DemoAnswer {
        let response = try await call(method, path, jar: jar, body: body, headers: headers)
        guard response.status == .ok else {
            throw TestError("\(method) \(path): \(response.status) \(String(buffer: response.body))")
        }
        return try JSONDecoder().decode(DemoAnswer.self, from: Data(response.body.readableBytesView))
    }
}

/// Runs `body` with Vapor applications (`count` of them, each set up by
/// `configure` with its index), then shuts them down.
func withApps(
    _ count: Int, configure: (Int, Application) async throws -> Void,
    _ body: ([any TestingApplicationTester]) async throws -> Void
) async throws {
    var apps: [Application] = []
    do {
        for i in 0..<count {
            let app = try await Application.make(.testing)
            apps.append(app)
            app.logger.logLevel = .critical
            try await configure(i, app)
        }
        try await body(try apps.map { try $0.testing() })
    } catch {
        for app in apps { try? await app.asyncShutdown() }
        throw error
    }
    for app in apps { try await app.asyncShutdown() }
}

/// The example node's routes on a live Vapor server on a loopback port: runs `body` with the port,
/// then shuts the server, the routes and the application down (also when `body` throws).
func withLiveDemoNode(
    nodeID: String, store: any SessionStore & IdempotencyStore, executor: BlockingExecutor,
    lameDuck: LameDuck = LameDuck(delayMillis: 0), _ body: (Int) async throws -> Void
) async throws {
    let app = try await Application.make(.testing)
    app.logger.logLevel = .critical
    do {
        let routes = try DemoNodeRoutes(
            app: app, nodeID: nodeID, store: store, executor: executor, sessions: SessionConfiguration(),
            lameDuck: lameDuck, logger: quietLogger())
        try await app.server.start(address: .hostname("127.0.0.1", port: 0))
        guard let port = app.http.server.shared.localAddress?.port else { throw TestError("the server has no port") }
        try await body(port)
        await app.server.shutdown()
        try await routes.shutdown()
    } catch {
        await app.server.shutdown()
        try? await app.asyncShutdown()
        throw error
    }
    try await app.asyncShutdown()
}
