import Foundation
import SessionClusterAsync
import SessionClusterTestKit
import SessionClusterVapor
import SessionCore
import Testing
import Vapor
import VaporTesting

/// Vapor's `SessionsMiddleware` with our driver (`req.session.data`): the
/// one-line switch, on two nodes sharing a store.
@Suite struct SessionDriverTests {
    /// A user as Vapor's session authentication keeps it (`_TestUserSession`).
    struct TestUser: SessionAuthenticatable {
        var name: String
        var sessionID: String { name }
    }

    static func configure(
        _ app: Application, node: String, store: any SessionStore, executor: BlockingExecutor,
        signingKey: [UInt8]? = nil
    ) throws {
        app.sessions.use(try .cluster(store: store, executor: executor, signingKeys: signingKey.map { [$0] } ?? []))  // ← the one line
        app.sessions.configuration = .cluster()
        app.middleware.use(app.sessions.middleware)
        app.post("login") { req -> String in
            req.session.data["user"] = req.body.string ?? ""
            return "\(node): welcome"
        }
        app.get("whoami") { req -> String in
            "\(node): \(req.session.data["user"] ?? "nobody") \(req.session.data["color"] ?? "-") \(req.session.data["size"] ?? "-")"
        }
        // Reads the session, waits, then sets one key: two of these on two nodes overlap.
        app.post("slow-set", ":key", ":value") { req async throws -> String in
            _ = req.session.data["user"]
            try await Task.sleep(for: .milliseconds(150))
            req.session.data[req.parameters.get("key")!] = req.parameters.get("value")!
            return "\(node): ok"
        }
        app.post("logout") { req -> String in
            req.session.destroy()
            return "\(node): bye"
        }
        // Vapor's session authentication: `_TestUserSession`.
        app.post("auth", "login") { req -> String in
            req.session.authenticate(TestUser(name: req.body.string ?? ""))
            return "\(node): logged in"
        }
        app.post("auth", "logout") { req -> String in
            req.session.unauthenticate(TestUser.self)
            return "\(node): logged out"
        }
        app.get("auth", "whoami") { req -> String in
            "\(node): \(req.session.authenticated(TestUser.self) ?? "nobody") \(req.session.data["color"] ?? "-")"
        }
        // A login without Vapor's authenticators: the app asks for the new ID.
        app.post("manual-login") { req -> String in
            req.session.data["user"] = req.body.string ?? ""
            req.regenerateClusterSessionID()
            return "\(node): welcome"
        }
    }

    func withNodes(
        _ kind: StoreKind, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        signingKey: [UInt8]? = nil, _ body: (any TestingApplicationTester, any TestingApplicationTester) async throws -> Void
    ) async throws {
        try await withExecutor { executor in
            try await withStores(kind, expiry: expiry, clock: clock) { stores in
                try await withApps(2) { i, app in
                    try Self.configure(
                        app, node: ["a", "b"][i], store: stores.nodes[min(i, stores.nodes.count - 1)],
                        executor: executor, signingKey: signingKey)
                } _: { nodes in
                    try await body(nodes[0], nodes[1])
                }
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func sessionSurvivesARequestToTheOtherNode(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            #expect(String(buffer: try await a.call(.POST, "/login", jar: jar, body: "ada").body) == "a: welcome")
            let cookie = try #require(jar["vapor-session"])
            #expect(SessionCore.SessionID(rawValue: cookie) != nil, "the core's ID shape")
            #expect(String(buffer: try await b.call(.GET, "/whoami", jar: jar).body) == "b: ada - -")
            #expect(String(buffer: try await a.call(.GET, "/whoami", jar: jar).body) == "a: ada - -")
            #expect(String(buffer: try await b.call(.POST, "/logout", jar: jar).body) == "b: bye")
            #expect(jar["vapor-session"] == nil)
            let stale = CookieJar(["vapor-session": cookie])
            #expect(String(buffer: try await a.call(.GET, "/whoami", jar: stale).body) == "a: nobody - -")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func concurrentChangesToDifferentKeysOnTwoNodesBothSurvive(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.call(.POST, "/login", jar: jar, body: "ada")
            async let color = a.call(.POST, "/slow-set/color/red", jar: jar.copy())
            async let size = b.call(.POST, "/slow-set/size/xl", jar: jar.copy())
            #expect(try await color.status == .ok)
            #expect(try await size.status == .ok)
            // A driver that wrote the whole session back would keep only one of the two.
            #expect(String(buffer: try await a.call(.GET, "/whoami", jar: jar).body) == "a: ada red xl")
            #expect(String(buffer: try await b.call(.GET, "/whoami", jar: jar).body) == "b: ada red xl")
        }
    }

    @Test(arguments: [StoreKind.memory, .replicated])
    func anExpiredSessionIsNotAdopted(_ kind: StoreKind) async throws {
        let clock = ManualClock()
        try await withNodes(kind, expiry: SessionExpiry(idleTimeoutMillis: 60_000), clock: clock.clock) { a, b in
            let jar = CookieJar()
            _ = try await a.call(.POST, "/login", jar: jar, body: "ada")
            let old = try #require(jar["vapor-session"])
            clock.advance(millis: 60_000)
            #expect(String(buffer: try await b.call(.GET, "/whoami", jar: jar).body) == "b: nobody - -")
            _ = try await b.call(.POST, "/login", jar: jar, body: "bob")
            #expect(jar["vapor-session"] != old, "a new ID")
            #expect(String(buffer: try await a.call(.GET, "/whoami", jar: jar).body) == "a: bob - -")
        }
    }

    @Test func signedIDsRefuseForgeries() async throws {
        try await withNodes(.memory, signingKey: Array("a signing key of 32 bytes or more!!".utf8)) { a, b in
            let jar = CookieJar()
            _ = try await a.call(.POST, "/login", jar: jar, body: "ada")
            let signed = try #require(jar["vapor-session"])
            #expect(signed.contains("."))
            #expect(String(buffer: try await b.call(.GET, "/whoami", jar: jar).body) == "b: ada - -")
            let bare = CookieJar(["vapor-session": String(signed.split(separator: ".")[0])])
            #expect(String(buffer: try await b.call(.GET, "/whoami", jar: bare).body) == "b: nobody - -")
        }
    }

    /// Session fixation: an ID the client had before logging in (planted by
    /// an attacker, or leaked) must not carry the logged-in session.
    @Test(arguments: StoreKind.allCases)
    func loginThroughVaporAuthenticationIssuesANewID(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.call(.POST, "/slow-set/color/red", jar: jar)
            let before = try #require(jar["vapor-session"])
            let planted = CookieJar(["vapor-session": before])  // what the attacker kept
            let login = try await b.call(.POST, "/auth/login", jar: jar, body: "ada")
            #expect(String(buffer: login.body) == "b: logged in")
            let after = try #require(jar["vapor-session"])
            #expect(after != before, "a new ID at login")
            #expect(String(buffer: try await a.call(.GET, "/auth/whoami", jar: jar).body) == "a: ada red")
            #expect(String(buffer: try await a.call(.GET, "/auth/whoami", jar: planted).body) == "a: nobody -")
            #expect(String(buffer: try await b.call(.GET, "/auth/whoami", jar: planted).body) == "b: nobody -")
            // The same user again changes nothing: the ID stays.
            _ = try await a.call(.POST, "/auth/login", jar: jar, body: "ada")
            #expect(jar["vapor-session"] == after)
            // Another user, and logout, each get a new ID too.
            _ = try await b.call(.POST, "/auth/login", jar: jar, body: "bob")
            let bob = try #require(jar["vapor-session"])
            #expect(bob != after)
            #expect(String(buffer: try await a.call(.GET, "/auth/whoami", jar: jar).body) == "a: bob red")
            let old = CookieJar(["vapor-session": after])
            #expect(String(buffer: try await a.call(.GET, "/auth/whoami", jar: old).body) == "a: nobody -")
            _ = try await a.call(.POST, "/auth/logout", jar: jar)
            #expect(jar["vapor-session"] != bob)
            #expect(String(buffer: try await b.call(.GET, "/auth/whoami", jar: jar).body) == "b: nobody red")
            let loggedIn = CookieJar(["vapor-session": bob])
            #expect(String(buffer: try await b.call(.GET, "/auth/whoami", jar: loggedIn).body) == "b: nobody -")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func regenerateClusterSessionIDIssuesANewID(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.call(.POST, "/slow-set/color/red", jar: jar)
            let before = try #require(jar["vapor-session"])
            _ = try await b.call(.POST, "/manual-login", jar: jar, body: "ada")
            #expect(jar["vapor-session"] != before, "a new ID at login")
            #expect(String(buffer: try await a.call(.GET, "/whoami", jar: jar).body) == "a: ada red -")
            let planted = CookieJar(["vapor-session": before])
            #expect(String(buffer: try await a.call(.GET, "/whoami", jar: planted).body) == "a: nobody - -")
        }
    }

    @Test func signedIDsRotateAtLogin() async throws {
        try await withNodes(.memory, signingKey: Array("a signing key of 32 bytes or more!!".utf8)) { a, b in
            let jar = CookieJar()
            _ = try await a.call(.POST, "/slow-set/color/red", jar: jar)
            let before = try #require(jar["vapor-session"])
            _ = try await b.call(.POST, "/auth/login", jar: jar, body: "ada")
            let after = try #require(jar["vapor-session"])
            #expect(after.contains(".") && after != before)
            #expect(String(buffer: try await a.call(.GET, "/auth/whoami", jar: jar).body) == "a: ada red")
            let planted = CookieJar(["vapor-session": before])
            #expect(String(buffer: try await a.call(.GET, "/auth/whoami", jar: planted).body) == "a: nobody -")
        }
    }

    /// An entry of a key/value view over the same store (Hummingbird's
    /// persist driver, say) has an ID anyone who knows its key can compute:
    /// it is no session, and the driver neither reads, writes nor deletes it.
    @Test(arguments: StoreKind.allCases)
    func keyValueEntriesAreNoSessions(_ kind: StoreKind) async throws {
        try await withExecutor { executor in
            try await withStores(kind) { stores in
                let entries = SessionKeyValueStore(store: stores.nodes[0], executor: executor, namespace: "persist:")
                let value = Array(#"{"user":"admin"}"#.utf8)
                try await entries.set(key: "victim", value: value, expiresInMillis: nil)
                let entryID = entries.id(for: "victim").rawValue
                try await withApps(2) { i, app in
                    try Self.configure(
                        app, node: ["a", "b"][i], store: stores.nodes[min(i, stores.nodes.count - 1)],
                        executor: executor)
                } _: { nodes in
                    let (a, b) = (nodes[0], nodes[1])
                    let jar = CookieJar(["vapor-session": entryID])
                    #expect(String(buffer: try await a.call(.GET, "/whoami", jar: jar).body) == "a: nobody - -")
                    _ = try await b.call(.POST, "/logout", jar: CookieJar(["vapor-session": entryID]))
                    _ = try await b.call(.POST, "/login", jar: jar, body: "eve")
                    #expect(jar["vapor-session"] != entryID, "a new session, not the entry")
                    #expect(String(buffer: try await a.call(.GET, "/whoami", jar: jar).body) == "a: eve - -")
                }
                let entry = try #require(try await entries.get(key: "victim"))
                #expect(entry.value == value, "the entry is unchanged")
                let (store, entryKey) = (stores.nodes[0], entries.id(for: "victim"))
                let snapshot = try #require(try await executor.run { try store.load(entryKey) })
                #expect(snapshot.attributes["user"] == nil, "the driver wrote nothing into the entry")
            }
        }
    }

    @Test func aStoreThatIsDownAnswers503() async throws {
        try await withExecutor { executor in
            try await withApps(1) { _, app in
                try Self.configure(app, node: "a", store: FailingStore(), executor: executor)
            } _: { nodes in
                let response = try await nodes[0].call(.POST, "/login", jar: CookieJar(), body: "ada")
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers.first(name: "Retry-After") == "1")
            }
        }
    }
}

/// A store whose backend is always down.
struct FailingStore: SessionStore {
    var expiry: SessionExpiry { SessionExpiry() }
    func load(_ id: SessionCore.SessionID) throws -> SessionSnapshot? { throw down }
    func apply(_ delta: SessionDelta) throws -> AppliedDelta? { throw down }
    func regenerate(_ id: SessionCore.SessionID, to newID: SessionCore.SessionID) throws -> Bool { throw down }
    func invalidate(_ id: SessionCore.SessionID) throws { throw down }
    var down: SessionStoreError { SessionStoreError(.unavailable, "Redis is down") }
}
