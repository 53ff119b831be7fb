import Foundation
import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import Synchronization
import Testing
import TestSupport

/// A store whose backend is down: every call fails as a network store would.
struct UnavailableStore: SessionStore {
    let expiry = SessionExpiry()
    func fail() -> SessionStoreError { SessionStoreError(.unavailable, "backend is down") }
    func load(_ id: SessionID) throws -> SessionSnapshot? { throw fail() }
    func apply(_ delta: SessionDelta) throws -> AppliedDelta? { throw fail() }
    func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool { throw fail() }
    func invalidate(_ id: SessionID) throws { throw fail() }
}

/// A memory store that counts the session lookups (`load`) it is asked for, per session.
final class LoadCountingStore: WrappingSessionStore {
    let base: any SessionStore & IdempotencyStore
    private let loads = Mutex<[SessionID: Int]>([:])

    init(base: any SessionStore & IdempotencyStore) { self.base = base }

    func around<T>(_ operation: String, session id: SessionID, _ body: () throws -> T) throws -> T {
        if operation == "load" { loads.withLock { $0[id, default: 0] += 1 } }
        return try body()
    }

    /// Lookups of `id` so far.
    func loadCount(of id: SessionID) -> Int { loads.withLock { $0[id] ?? 0 } }
    /// Lookups of any session so far.
    var totalLoads: Int { loads.withLock { $0.values.reduce(0, +) } }
}

/// A server with the session middleware on a real loopback socket, driven by curl.
final class SessionTestServer {
    let server: HTTPServer
    let store: any SessionStore
    let middleware: SessionMiddleware
    let client = CurlClient()

    init(store: any SessionStore = MemorySessionStore(), configuration: SessionConfiguration = SessionConfiguration()) throws {
        self.store = store
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        middleware = SessionMiddleware(store: store, configuration: configuration, logger: logger)
        var router = Router()
        router.get("/read") { request in
            let count = try request.session().get("count", as: Int.self) ?? 0
            return .json("{\"count\":\(count)}")
        }
        router.get("/nothing") { _ in .text("no session used") }
        router.post("/count") { request in
            .json("{\"count\":\(try request.session().increment("count"))}")
        }
        router.post("/login") { request in
            let session = try request.session()
            try session.regenerateID()
            try session.set("user", String(decoding: request.body, as: UTF8.self))
            return .text("ok")
        }
        router.post("/note") { request in
            try request.session().set("note", String(decoding: request.body, as: UTF8.self))
            return .text("noted")
        }
        router.post("/logout") { request in
            try request.session().invalidate()
            return .text("bye")
        }
        router.post("/expire-midway") { request in
            // The session ends in the store while the handler runs (another node, an expiry);
            // the handler sets a cookie of its own.
            let session = try request.session()
            if let id = session.id { try store.invalidate(id) }
            try session.set("note", "after")
            var response = HTTPResponse.text("ok")
            response.headers.add(name: "Set-Cookie", value: "theme=dark; Path=/")
            return response
        }
        server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0, eventLoops: 1, handlerThreads: 4),
            logger: logger, middleware: [middleware], responder: router.responder)
        try server.start()
    }

    deinit { server.shutdown() }

    func curl(_ method: String, _ path: String, headers: [String] = [], body: String? = nil, useJar: Bool = true)
        throws -> CurlClient.Response
    {
        try client.request(method, "http://127.0.0.1:\(server.port)\(path)", headers: headers, body: body, useJar: useJar)
    }

    func jarCookie() throws -> String? { client.cookie("sid") }
}

@Suite(.serialized, .tags(.integration)) struct SessionMiddlewareEndToEndTests {
    @Test func readOnlyRequestsCreateNothing() throws {
        let memory = MemorySessionStore()
        let t = try SessionTestServer(store: memory)
        let read = try t.curl("GET", "/read")
        #expect(read.status == 200)
        #expect(read.body == "{\"count\":0}")
        #expect(read.header("Set-Cookie").isEmpty)
        let nothing = try t.curl("GET", "/nothing")
        #expect(nothing.header("Set-Cookie").isEmpty)
        #expect(memory.count == 0)
    }

    @Test func firstWriteSetsAHardenedCookieThatLaterRequestsUse() throws {
        let t = try SessionTestServer()
        let first = try t.curl("POST", "/count")
        #expect(first.body == "{\"count\":1}")
        let cookie = try #require(first.header("Set-Cookie").first)
        #expect(cookie.hasPrefix("sid="))
        #expect(cookie.contains("; Path=/"))
        #expect(cookie.contains("; HttpOnly"))
        #expect(cookie.contains("; SameSite=Lax"))
        #expect(!cookie.contains("Secure"))
        let second = try t.curl("POST", "/count")
        #expect(second.body == "{\"count\":2}")
        #expect(second.header("Set-Cookie").isEmpty, "an existing session is not re-sent")
        #expect(try t.curl("GET", "/read").body == "{\"count\":2}")
    }

    @Test func aForgedIDIsNeverAdopted() throws {
        let memory = MemorySessionStore()
        let t = try SessionTestServer(store: memory)
        let forged = SessionID.generate().rawValue
        let result = try t.curl("POST", "/count", headers: ["Cookie: sid=\(forged)"], useJar: false)
        #expect(result.body == "{\"count\":1}")
        let cookie = try #require(result.header("Set-Cookie").first)
        #expect(!cookie.contains(forged))
        #expect(try memory.load(SessionID(rawValue: forged)!) == nil)
        // Garbage cookies are ignored the same way.
        let garbage = try t.curl("GET", "/read", headers: ["Cookie: sid=../../etc/passwd; other=1"], useJar: false)
        #expect(garbage.status == 200)
    }

    @Test func signedCookiesRejectTamperingWithoutAStoreLookup() throws {
        let memory = LoadCountingStore(base: MemorySessionStore())
        let key = Array("0123456789abcdef0123456789abcdef".utf8)
        let t = try SessionTestServer(store: memory, configuration: SessionConfiguration(signingKey: key))
        _ = try t.curl("POST", "/count")
        let value = try #require(try t.jarCookie())
        let parts = value.split(separator: ".")
        #expect(parts.count == 2)
        let id = try #require(SessionID(rawValue: String(parts[0])))
        #expect(try t.curl("POST", "/count").body == "{\"count\":2}")
        #expect(memory.loadCount(of: id) == 1, "the validly signed cookie was looked up")

        // The bare ID (signature stripped) and a wrong signature are both refused, before any
        // store lookup: neither the real session nor any other is loaded.
        let loadsBefore = memory.totalLoads
        let bare = try t.curl("POST", "/count", headers: ["Cookie: sid=\(id.rawValue)"], useJar: false)
        #expect(bare.body == "{\"count\":1}")
        var mac = Array(parts[1])
        mac[0] = mac[0] == "A" ? "B" : "A"
        let tampered = try t.curl("POST", "/count", headers: ["Cookie: sid=\(parts[0]).\(String(mac))"], useJar: false)
        #expect(tampered.body == "{\"count\":1}")
        #expect(memory.loadCount(of: id) == 1, "a refused cookie's ID is never looked up")
        #expect(memory.totalLoads == loadsBefore, "a refused cookie costs no store lookup at all")
        // The real session was not touched by either.
        #expect(try memory.load(id)?.attributes["count"] == Array("2".utf8))
        // A signature made with another key is refused too.
        let other = SessionMiddleware(
            store: memory, configuration: try SessionConfiguration(signingKey: Array("another key, 32 bytes long.....!".utf8)),
            logger: Logger(label: "x"))
        #expect(t.middleware.verifiedID(other.cookieValue(for: id)) == nil)
        #expect(t.middleware.verifiedID(t.middleware.cookieValue(for: id)) == id)
    }

    @Test func secureFlagFollowsTrustedForwardedProto() throws {
        let trusted = try SessionTestServer()
        let viaHTTPS = try trusted.curl("POST", "/count", headers: ["X-Forwarded-Proto: https"], useJar: false)
        #expect(viaHTTPS.header("Set-Cookie").first?.contains("; Secure") == true)

        let untrusted = try SessionTestServer(configuration: SessionConfiguration(trustedProxies: ["10.9.9.9"]))
        let spoofed = try untrusted.curl("POST", "/count", headers: ["X-Forwarded-Proto: https"], useJar: false)
        #expect(spoofed.header("Set-Cookie").first?.contains("Secure") == false)

        let always = try SessionTestServer(configuration: SessionConfiguration(secureCookie: true))
        #expect(try always.curl("POST", "/count", useJar: false).header("Set-Cookie").first?.contains("; Secure") == true)
    }

    @Test func loginRegeneratesTheIDAndLogoutExpiresTheCookie() throws {
        let memory = MemorySessionStore()
        let t = try SessionTestServer(store: memory)
        _ = try t.curl("POST", "/count")
        let before = try #require(try t.jarCookie())
        let login = try t.curl("POST", "/login", body: "ada")
        #expect(login.status == 200)
        let after = try #require(try t.jarCookie())
        #expect(after != before)
        #expect(try memory.load(SessionID(rawValue: before)!) == nil)
        #expect(try t.curl("GET", "/read").body == "{\"count\":1}", "data moved to the new ID")

        let logout = try t.curl("POST", "/logout")
        let expired = try #require(logout.header("Set-Cookie").first)
        #expect(expired.contains("Max-Age=0"))
        #expect(try memory.load(SessionID(rawValue: after)!) == nil)
        #expect(try t.curl("GET", "/read").body == "{\"count\":0}")
    }

    @Test func aSessionEndedDuringTheRequestGetsANewCookieAndTheHandlersCookiesStay() throws {
        let memory = MemorySessionStore()
        let t = try SessionTestServer(store: memory)
        _ = try t.curl("POST", "/count")
        let before = try #require(try t.jarCookie())
        let response = try t.curl("POST", "/expire-midway")
        #expect(response.status == 200)
        let cookies = response.header("Set-Cookie")
        #expect(cookies.contains { $0.hasPrefix("theme=dark") }, "the handler's cookie is kept: \(cookies)")
        #expect(cookies.filter { $0.hasPrefix("sid=") }.count == 1, "\(cookies)")
        let after = try #require(try t.jarCookie())
        #expect(after != before, "an ended session's ID is never revived")
        #expect(try memory.load(SessionID(rawValue: after)!)?.attributes["note"] != nil)
    }

    @Test func aSessionOverTheSizeCapIsA413AndNothingIsSaved() throws {
        let memory = MemorySessionStore(maxSessionBytes: 200)
        let t = try SessionTestServer(store: memory)
        let big = String(repeating: "x", count: 300)
        // A new session over the cap: 413 with the public error code, no cookie, nothing stored.
        let refused = try t.curl("POST", "/note", body: big)
        #expect(refused.status == 413)
        #expect(refused.body.contains("\"error\":\"session_too_large\""), "\(refused.body)")
        #expect(refused.header("Set-Cookie").isEmpty, "no cookie for a session that was not saved")
        #expect(memory.count == 0)
        // An existing session under the cap, then a change that would take it over: 413, and the
        // session keeps what it had.
        #expect(try t.curl("POST", "/count").body == "{\"count\":1}")
        let id = try #require(try t.jarCookie().flatMap { SessionID(rawValue: $0) })
        let over = try t.curl("POST", "/note", body: big)
        #expect(over.status == 413)
        #expect(over.body.contains("\"error\":\"session_too_large\""), "\(over.body)")
        let kept = try #require(try memory.load(id), "the session survives a refused change")
        #expect(kept.attributes["count"] == Array("1".utf8))
        #expect(kept.attributes["note"] == nil)
        #expect(try t.curl("POST", "/note", body: "short").status == 200, "a change under the cap is saved")
        #expect(try memory.load(id)?.attributes["note"] == Array("\"short\"".utf8))
    }

    @Test func aStoreOutageIsA503WithAClearJSONError() throws {
        let t = try SessionTestServer(store: UnavailableStore())
        let result = try t.curl("POST", "/count", headers: ["Cookie: sid=\(SessionID.generate().rawValue)"], useJar: false)
        #expect(result.status == 503)
        #expect(result.body.contains("\"error\":\"session_store_unavailable\""))
        #expect(result.header("Retry-After") == ["1"])
        // Routes that never touch the session still work.
        #expect(try t.curl("GET", "/nothing", useJar: false).status == 200)
    }
}
