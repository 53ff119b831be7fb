import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import SessionClusterAsync
import SessionClusterHummingbird
import SessionClusterTestKit
import SessionCore
import SessionRedis
import TestSupport
import Testing

@testable import HummingbirdNode

/// The native middleware (our `Session` in Hummingbird handlers), through the
/// example node's routes, on two nodes sharing a store: the same store for
/// memory and Redis (two clients), two replicating stores for replicate.
@Suite struct NativeSessionTests {
    /// Runs `body` with clients of node "a" and node "b".
    func withNodes(
        _ kind: StoreKind, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        sessions: SessionConfiguration = SessionConfiguration(),
        _ body: @escaping @Sendable (any TestClientProtocol, any TestClientProtocol) async throws -> Void
    ) async throws {
        try await withExecutor(threads: 16) { executor in
            try await withStores(kind, expiry: expiry, clock: clock) { stores in
                let apps = ["a", "b"].enumerated().map { i, name in
                    DemoNodeApp(
                        nodeID: name, store: stores.nodes[min(i, stores.nodes.count - 1)], executor: executor,
                        sessions: sessions, logger: quietLogger())
                }
                let responders = apps.map { $0.router.buildResponder() }
                try await Application(responder: responders[0]).test(.router) { a in
                    try await Application(responder: responders[1]).test(.router) { b in
                        try await body(a, b)
                    }
                }
                for app in apps { try await app.shutdown() }
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func sessionSurvivesARequestToTheOtherNode(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            #expect(try await a.demo(.get, "/api/session", jar: jar) == DemoAnswer(node: "a", count: 0, user: nil))
            #expect(jar["sid"] == nil, "a read creates no session")
            #expect(try await a.demo(.post, "/api/counter", jar: jar) == DemoAnswer(node: "a", count: 1))
            let cookie = try #require(jar["sid"])
            #expect(try await b.demo(.post, "/api/counter", jar: jar) == DemoAnswer(node: "b", count: 2))
            #expect(try await a.demo(.get, "/api/session", jar: jar) == DemoAnswer(node: "a", count: 2, user: nil))
            #expect(try await b.demo(.get, "/api/session", jar: jar).count == 2)
            #expect(jar["sid"] == cookie, "the ID stays while nothing regenerates it")
            let response = try await b.call(.get, "/api/session", jar: jar)
            #expect(response.headers[HTTPField.Name("X-Served-By")!] == "b")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func concurrentIncrementsAreExact(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.post, "/api/counter", jar: jar)
            let requests = 40
            let counts = try await withThrowingTaskGroup(of: Int64.self) { group in
                for i in 0..<requests {
                    let node = i % 2 == 0 ? a : b
                    let mine = jar.copy()
                    group.addTask { try await node.demo(.post, "/api/counter", jar: mine).count }
                }
                return try await group.reduce(into: [Int64]()) { $0.append($1) }
            }
            if kind == .replicated {
                // Each node answers with its own merged view (per-node counts): values may repeat, none is lost.
                #expect(counts.allSatisfy { (2...Int64(requests + 1)).contains($0) })
            } else {
                #expect(counts.sorted() == Array(2...Int64(requests + 1)), "every increment got its own value")
            }
            #expect(try await b.demo(.get, "/api/session", jar: jar).count == Int64(requests + 1))
            #expect(try await a.demo(.get, "/api/session", jar: jar).count == Int64(requests + 1))
        }
    }

    @Test(arguments: [StoreKind.memory, .replicated])
    func expiredSessionsAreGoneAndTheirIDNeverAdopted(_ kind: StoreKind) async throws {
        let clock = ManualClock()
        let expiry = SessionExpiry(idleTimeoutMillis: 60_000, absoluteTimeoutMillis: 600_000)
        try await withNodes(kind, expiry: expiry, clock: clock.clock) { a, b in
            try await expectExpiry(a, b) { clock.advance(millis: 60_000) }
        }
    }

    @Test func expiredSessionsAreGoneInRedis() async throws {
        // Redis expires the key itself (PEXPIRE, real time): the test waits 5x the idle timeout.
        try await withNodes(.redis, expiry: SessionExpiry(idleTimeoutMillis: 500)) { a, b in
            try await expectExpiry(a, b) { try await Task.sleep(for: .milliseconds(2_500)) }
        }
    }

    func expectExpiry(
        _ a: any TestClientProtocol, _ b: any TestClientProtocol, passIdleTimeout: @Sendable () async throws -> Void
    ) async throws {
        let jar = CookieJar()
        _ = try await a.demo(.post, "/api/counter", jar: jar)
        let old = try #require(jar["sid"])
        try await passIdleTimeout()
        #expect(try await b.demo(.get, "/api/session", jar: jar).count == 0)
        #expect(try await b.demo(.post, "/api/counter", jar: jar).count == 1, "a new session")
        #expect(jar["sid"] != old, "the expired ID is not adopted")
        #expect(try await a.demo(.get, "/api/session", jar: jar).count == 1)
    }

    @Test(arguments: StoreKind.allCases)
    func loginRegeneratesTheIDAndTheOldOneStopsWorking(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.post, "/api/counter", jar: jar)
            _ = try await b.demo(.post, "/api/counter", jar: jar)
            let before = jar.copy()
            let login = try await a.demo(.post, "/api/login", jar: jar, body: #"{"user": " ada "}"#)
            #expect(login == DemoAnswer(node: "a", count: 2, user: "ada"))
            #expect(jar["sid"] != before["sid"], "a new ID at login")
            #expect(try await b.demo(.get, "/api/session", jar: jar) == DemoAnswer(node: "b", count: 2, user: "ada"))
            #expect(try await b.demo(.get, "/api/session", jar: before) == DemoAnswer(node: "b", count: 0, user: nil))
            #expect(try await a.demo(.get, "/api/session", jar: before).count == 0)
            // Logout invalidates everywhere and expires the cookie.
            #expect(try await b.demo(.post, "/api/logout", jar: jar) == DemoAnswer(node: "b", count: 0, user: nil))
            #expect(jar["sid"] == nil)
            let stale = jar.copy()
            #expect(try await a.demo(.get, "/api/session", jar: stale).user == nil)
            let bad = try await a.call(.post, "/api/login", jar: jar, body: "not json")
            #expect(bad.status == .badRequest)
            #expect(bad.headers[HTTPField.Name("X-Served-By")!] == "a")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aUsersSessionsAreListedOnEitherNodeAndRevokeOthersEndsThem(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let (phone, laptop) = (CookieJar(), CookieJar())
            _ = try await a.demo(.post, "/api/login", jar: phone, body: #"{"user":"ada"}"#, headers: [.userAgent: "phone"])
            _ = try await b.demo(.post, "/api/login", jar: laptop, body: #"{"user":"ada"}"#, headers: [.userAgent: "laptop"])
            var listed: UserSessionsAnswer?
            for _ in 0..<60 {  // replicate: the other login arrives a moment later
                let response = try await b.call(.get, "/api/sessions", jar: phone)
                #expect(response.status == .ok)
                listed = try JSONDecoder().decode(UserSessionsAnswer.self, from: Data(response.body.readableBytesView))
                if listed?.sessions.count == 2 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(listed?.user == "ada")
            #expect(Set(listed?.sessions.compactMap(\.client) ?? []) == ["phone", "laptop"])
            #expect(listed?.sessions.filter(\.current).map(\.client) == ["phone"])
            let revoked = try await a.call(.post, "/api/sessions/revoke-others", jar: laptop)
            #expect(String(buffer: revoked.body) == #"{"node":"a","revoked":1}"#)
            #expect(try await b.demo(.get, "/api/session", jar: phone).user == nil, "the phone is logged out")
            #expect(try await b.demo(.get, "/api/session", jar: laptop).user == "ada")
            #expect(try await a.call(.get, "/api/sessions", jar: CookieJar()).status == .unauthorized)
            #expect(try await a.call(.delete, "/api/sessions/AAAAAAAAAAAAAAAAAAAAAA", jar: laptop).status == .notFound)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func idempotentRetriesRunOnce(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.post, "/api/counter", jar: jar)
            let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "retry-\(UUID().uuidString)"]
            let first = try await a.call(.post, "/api/counter", jar: jar, headers: key)
            #expect(first.status == .ok)
            #expect(String(buffer: first.body) == #"{"node":"a","count":2}"#)
            // The balancer retries on the other node: the stored answer, not a second increment.
            let retry = try await b.call(.post, "/api/counter", jar: jar, headers: key)
            #expect(retry.status == .ok)
            #expect(String(buffer: retry.body) == #"{"node":"a","count":2}"#)
            #expect(retry.headers[HTTPField.Name("Idempotent-Replayed")!] == "true")
            #expect(try await b.demo(.get, "/api/session", jar: jar).count == 2)
            let reused = try await b.call(.post, "/api/login", jar: jar, body: #"{"user":"x"}"#, headers: key)
            #expect(reused.status == .unprocessableContent)
            // A new session made by an idempotent request: the replay is the
            // response, without its cookie (another client may send the same key).
            let fresh = CookieJar()
            let newKey: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "new-\(UUID().uuidString)"]
            _ = try await b.call(.post, "/api/counter", jar: fresh, headers: newKey)
            let replayJar = CookieJar()
            let replay = try await a.call(.post, "/api/counter", jar: replayJar, headers: newKey)
            #expect(replay.headers[HTTPField.Name("Idempotent-Replayed")!] == "true")
            #expect(replayJar["sid"] == nil && fresh["sid"] != nil)
            #expect(try await a.demo(.get, "/api/session", jar: fresh).count == 1)
        }
    }

    /// Issue 14, finding 1: an idempotency record is its caller's. A second
    /// client without a cookie that sends the same key and body as a first,
    /// cookieless one that logged in gets the replay without the first
    /// client's session cookie; another session's same key runs its own request.
    @Test(arguments: StoreKind.allCases)
    func idempotencyRecordsAreScopedToTheirCaller(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let replayed = HTTPField.Name("Idempotent-Replayed")!
            let key: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "shared-\(UUID().uuidString)"]
            let login = #"{"user":"ada"}"#
            let first = CookieJar()
            let original = try await a.call(.post, "/api/login", jar: first, body: login, headers: key)
            #expect(original.status == .ok)
            let firstCookie = try #require(first["sid"], "the login made a session")
            // Another cookieless client, same key and body: the stored answer, no cookie.
            let second = CookieJar()
            let replay = try await b.call(.post, "/api/login", jar: second, body: login, headers: key)
            #expect(replay.status == .ok)
            #expect(replay.headers[replayed] == "true")
            #expect(replay.headers[values: .setCookie].isEmpty, "no Set-Cookie in the replay")
            #expect(!String(buffer: replay.body).contains(firstCookie))
            #expect(second["sid"] == nil)
            #expect(try await a.demo(.get, "/api/session", jar: second) == DemoAnswer(node: "a", count: 0, user: nil))
            #expect(try await b.demo(.get, "/api/session", jar: first) == DemoAnswer(node: "b", count: 0, user: "ada"))
            // Sessions: the same key in another session is that session's own request.
            let third = CookieJar()
            _ = try await a.demo(.post, "/api/counter", jar: third)
            let counted = try await a.call(.post, "/api/counter", jar: third, headers: key)
            #expect(counted.status == .ok && counted.headers[replayed] == nil)
            #expect(String(buffer: counted.body) == #"{"node":"a","count":2}"#)
            let fourth = CookieJar()
            _ = try await b.demo(.post, "/api/counter", jar: fourth)
            let own = try await b.call(.post, "/api/counter", jar: fourth, headers: key)
            #expect(own.status == .ok && own.headers[replayed] == nil, "no replay of another session's run")
            #expect(String(buffer: own.body) == #"{"node":"b","count":2}"#)
            let fifth = CookieJar()
            _ = try await a.demo(.post, "/api/counter", jar: fifth)
            let other = try await b.call(.post, "/api/login", jar: fifth, body: #"{"user":"bob"}"#, headers: key)
            #expect(other.status == .ok, "no 422 for a key another session used for another request")
            #expect(other.headers[replayed] == nil)
            #expect(try await a.demo(.get, "/api/session", jar: fifth) == DemoAnswer(node: "a", count: 1, user: "bob"))
            #expect(try await a.demo(.get, "/api/session", jar: third).count == 2)
        }
    }

    @Test func signedCookiesRefuseForgedIDs() async throws {
        let sessions = try SessionConfiguration(signingKey: Array("a signing key of 32 bytes or more!!".utf8))
        try await withNodes(.memory, sessions: sessions) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.post, "/api/counter", jar: jar)
            let signed = try #require(jar["sid"])
            #expect(signed.contains("."))
            #expect(try await b.demo(.get, "/api/session", jar: jar).count == 1)
            let id = String(signed.split(separator: ".")[0])
            let forged = CookieJar(["sid": id + ".AAAA"])
            #expect(try await b.demo(.get, "/api/session", jar: forged).count == 0)
            let unsigned = CookieJar(["sid": id])
            #expect(try await b.demo(.get, "/api/session", jar: unsigned).count == 0)
        }
    }

    /// Exclusive mode (Redis lock): a handler's read-modify-write of one
    /// attribute, which plain deltas can lose, is exact when every request
    /// of the session holds the lock across the handler (async) and the commit.
    @Test func exclusiveModeSerializesReadModifyWrite() async throws {
        try await withExecutor(threads: 16) { executor in
            try await withStores(.redis) { stores in
                let redis = try await onThread { try RedisServerProcess.fromEnvironmentOrPrivate() }
                let client = RedisClient(configuration: try RedisConfiguration(url: redis.url), logger: quietLogger())
                let lock = DistributedSessionLock.redis(
                    client: client, keyPrefix: "lock:\(UUID().uuidString):", logger: quietLogger())
                let routers = stores.nodes.map { store in
                    let manager = SessionRequestManager(
                        store: store, configuration: SessionConfiguration(exclusive: lock), executor: executor,
                        lockThreads: 8, logger: quietLogger())
                    let router = Router(context: BasicClusterSessionRequestContext.self)
                    router.add(middleware: ClusterSessionMiddleware(manager: manager))
                    router.post("/rmw") { _, context -> String in
                        let session = try await context.session()
                        let value = try session.get("n", as: Int.self) ?? 0
                        try await Task.sleep(for: .milliseconds(5))  // widen the race
                        try session.set("n", value + 1)
                        return "\(value + 1)"
                    }
                    return (router, manager)
                }
                let responders = routers.map { $0.0.buildResponder() }
                try await Application(responder: responders[0]).test(.router) { a in
                    try await Application(responder: responders[1]).test(.router) { b in
                        let jar = CookieJar()
                        _ = try await a.call(.post, "/rmw", jar: jar)
                        let results = try await withThrowingTaskGroup(of: String.self) { group in
                            for i in 0..<16 {
                                let node = i % 2 == 0 ? a : b
                                let mine = jar.copy()
                                group.addTask { String(buffer: try await node.call(.post, "/rmw", jar: mine).body) }
                            }
                            return try await group.reduce(into: [String]()) { $0.append($1) }
                        }
                        #expect(Set(results) == Set((2...17).map { "\($0)" }), "no update lost: \(results.sorted())")
                    }
                }
                for (_, manager) in routers { try await manager.shutdown() }
                client.close()
                try await onThread { redis.server?.stop() }
            }
        }
    }
}
