import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import SessionClusterTestKit
import TestSupport
import Testing

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
        jar.update(setCookies: response.headers[values: .setCookie])
        return response
    }

    /// `call`, decoding the demo API's JSON (and failing on any other status than 200).
    func demo(
        _ method: HTTPRequest.Method, _ uri: String, jar: CookieJar, body: String? = nil, headers: HTTPFields = [:]
    ) async throws -> DemoAnswer {
        let response = try await call(method, uri, jar: jar, body: body, headers: headers)
        guard response.status == .ok else {
            throw TestError("\(method) \(uri): \(response.status) \(String(buffer: response.body))")
        }
        return try JSONDecoder().decode(DemoAnswer.self, from: Data(response.body.readableBytesView))
    }
}

