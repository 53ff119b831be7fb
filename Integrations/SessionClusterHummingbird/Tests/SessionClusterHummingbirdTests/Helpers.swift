import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import Synchronization
import Testing

/// A browser's cookies: what `Set-Cookie` headers set, sent back on every request.
final class CookieJar: Sendable {
    private let cookies = Mutex<[String: String]>([:])

    init(_ initial: [String: String] = [:]) { cookies.withLock { $0 = initial } }

    subscript(name: String) -> String? { cookies.withLock { $0[name] } }

    var header: String {
        cookies.withLock { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "; ") }
    }

    func copy() -> CookieJar { CookieJar(cookies.withLock { $0 }) }

    /// Whether the cookie's `Expires` attribute is now or earlier (how hummingbird-auth deletes cookies).
    static func expiresInThePast(_ header: String) -> Bool {
        guard let range = header.range(of: "Expires=") else { return false }
        let text = header[range.upperBound...].prefix { $0 != ";" }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: String(text)) else { return false }
        return date <= Date().addingTimeInterval(1)
    }

    func update(from response: TestResponse) {
        for header in response.headers[values: .setCookie] {
            let pair = header.split(separator: ";", maxSplits: 1)[0]
            guard let eq = pair.firstIndex(of: "=") else { continue }
            let name = String(pair[..<eq])
            let value = String(pair[pair.index(after: eq)...])
            let expired = header.contains("Max-Age=0") || Self.expiresInThePast(header)
            cookies.withLock { $0[name] = expired ? nil : value }
        }
    }
}

/// A JSON answer of the demo API.
struct DemoAnswer: Decodable, Equatable {
    var node: String
    var count: Int64
    var user: String?
}

extension TestClientProtocol {
    /// Sends a request with the jar's cookies, updates the jar from the answer.
    @discardableResult
    func call(
        _ method: HTTPRequest.Method, _ uri: String, jar: CookieJar, body: String? = nil, headers: HTTPFields = [:]
    ) async throws -> TestResponse {
        var headers = headers
        let cookie = jar.header
        if !cookie.isEmpty { headers[.cookie] = cookie }
        let response = try await executeRequest(
            uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) })
        jar.update(from: response)
        return response
    }

    /// `call`, decoding the demo API's JSON (and failing on any other status than 200).
    func demo(
        _ method: HTTPRequest.Method, _ uri: String, jar: CookieJar, body: String? = nil, headers: HTTPFields = [:]
    ) async throws -> DemoAnswer {
        let response = try await call(method, uri, jar: jar, body: body, headers: headers)
        guard response.status == .ok else {
            throw TestKitError("\(method) \(uri): \(response.status) \(String(buffer: response.body))")
        }
        return try JSONDecoder().decode(DemoAnswer.self, from: Data(response.body.readableBytesView))
    }
}

/// Which store a test runs against.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case memory, redis, replicated

    var testDescription: String { rawValue }

    func make(expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system) throws -> TestStores {
        switch self {
        case .memory: TestStores.memory(expiry: expiry, clock: clock)
        case .redis: try TestStores.redis(expiry: expiry)
        case .replicated: try TestStores.replicated(expiry: expiry, clock: clock)
        }
    }
}

/// A small executor per test, shut down by the test.
func withExecutor<T>(threads: Int = 8, _ body: (BlockingExecutor) async throws -> T) async throws -> T {
    let executor = BlockingExecutor(threads: threads)
    do {
        let result = try await body(executor)
        try await executor.shutdown()
        return result
    } catch {
        try? await executor.shutdown()
        throw error
    }
}

/// Runs `body` with the stores, then shuts them down (also on failure).
/// Setup and teardown block, so they run on a thread of their own.
func withStores<T>(
    _ kind: StoreKind, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
    _ body: (TestStores) async throws -> T
) async throws -> T {
    let stores = try await onThread { try kind.make(expiry: expiry, clock: clock) }
    do {
        let result = try await body(stores)
        try await onThread { stores.shutdown() }
        return result
    } catch {
        _ = try? await onThread { stores.shutdown() }
        throw error
    }
}
