import Foundation
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import TestSupport
import Testing
import Vapor
import VaporTesting

@testable import VaporNode

/// The native middleware (`req.clusterSession()`), through the example
/// node's routes, on two nodes sharing a store.
@Suite struct NativeSessionTests {
    func withNodes(
        _ kind: StoreKind, expiry: SessionExpiry = SessionExpiry(), clock: SessionClock = .system,
        _ body: (any TestingApplicationTester, any TestingApplicationTester) async throws -> Void
    ) async throws {
        try await withExecutor(threads: 16) { executor in
            try await withStores(kind, expiry: expiry, clock: clock) { stores in
                let routes = RoutesBox()
                try await withApps(2) { i, app in
                    routes.append(
                        try DemoNodeRoutes(
                            app: app, nodeID: ["a", "b"][i], store: stores.nodes[min(i, stores.nodes.count - 1)],
                            executor: executor, sessions: SessionConfiguration(), logger: quietLogger()))
                } _: { nodes in
                    try await body(nodes[0], nodes[1])
                }
                for route in routes.all { try await route.shutdown() }
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func sessionSurvivesARequestToTheOtherNode(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            #expect(try await a.demo(.GET, "/api/session", jar: jar) == DemoAnswer(node: "a", count: 0))
            #expect(jar["sid"] == nil, "a read creates no session")
            #expect(try await a.demo(.POST, "/api/counter", jar: jar) == DemoAnswer(node: "a", count: 1))
            #expect(try await b.demo(.POST, "/api/counter", jar: jar) == DemoAnswer(node: "b", count: 2))
            #expect(try await a.demo(.GET, "/api/session", jar: jar) == DemoAnswer(node: "a", count: 2))
            let response = try await b.call(.GET, "/api/session", jar: jar)
            #expect(response.headers.first(name: "X-Served-By") == "b")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func concurrentIncrementsAreExact(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.POST, "/api/counter", jar: jar)
            let requests = 40
            let counts = try await withThrowingTaskGroup(of: Int64.self) { group in
                for i in 0..<requests {
                    let node = i % 2 == 0 ? a : b
                    let mine = jar.copy()
                    group.addTask { try await node.demo(.POST, "/api/counter", jar: mine).count }
                }
                return try await group.reduce(into: [Int64]()) { $0.append($1) }
            }
            if kind == .replicated {
                // Each node answers with its own merged view (per-node counts): values may repeat, none is lost.
                #expect(counts.allSatisfy { (2...Int64(requests + 1)).contains($0) })
            } else {
                #expect(counts.sorted() == Array(2...Int64(requests + 1)), "every increment got its own value")
            }
            #expect(try await b.demo(.GET, "/api/session", jar: jar).count == Int64(requests + 1))
            #expect(try await a.demo(.GET, "/api/session", jar: jar).count == Int64(requests + 1))
        }
    }

    @Test(arguments: [StoreKind.memory, .replicated])
    func expiredSessionsAreGoneAndTheirIDNeverAdopted(_ kind: StoreKind) async throws {
        let clock = ManualClock()
        try await withNodes(kind, expiry: SessionExpiry(idleTimeoutMillis: 60_000), clock: clock.clock) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.POST, "/api/counter", jar: jar)
            let old = try #require(jar["sid"])
            clock.advance(millis: 60_000)
            #expect(try await b.demo(.GET, "/api/session", jar: jar).count == 0)
            #expect(try await b.demo(.POST, "/api/counter", jar: jar).count == 1, "a new session")
            #expect(jar["sid"] != old, "the expired ID is not adopted")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func loginRegeneratesTheIDAndTheOldOneStopsWorking(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.POST, "/api/counter", jar: jar)
            let before = jar.copy()
            let login = try await b.demo(.POST, "/api/login", jar: jar, body: #"{"user":"ada"}"#)
            #expect(login == DemoAnswer(node: "b", count: 1, user: "ada"))
            #expect(jar["sid"] != before["sid"])
            #expect(try await a.demo(.GET, "/api/session", jar: jar) == DemoAnswer(node: "a", count: 1, user: "ada"))
            #expect(try await a.demo(.GET, "/api/session", jar: before) == DemoAnswer(node: "a", count: 0))
            #expect(try await a.demo(.POST, "/api/logout", jar: jar) == DemoAnswer(node: "a", count: 0))
            #expect(jar["sid"] == nil)
            let bad = try await b.call(.POST, "/api/login", jar: jar, body: "{}")
            #expect(bad.status == .badRequest)
            #expect(bad.headers.first(name: "X-Served-By") == "b")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aUsersSessionsAreListedOnEitherNodeAndRevokeOthersEndsThem(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let (phone, laptop) = (CookieJar(), CookieJar())
            _ = try await a.demo(.POST, "/api/login", jar: phone, body: #"{"user":"ada"}"#, headers: ["User-Agent": "phone"])
            _ = try await b.demo(.POST, "/api/login", jar: laptop, body: #"{"user":"ada"}"#, headers: ["User-Agent": "laptop"])
            var listed: UserSessionsAnswer?
            for _ in 0..<60 {  // replicate: the other login arrives a moment later
                let response = try await b.call(.GET, "/api/sessions", jar: phone)
                #expect(response.status == .ok)
                listed = try JSONDecoder().decode(UserSessionsAnswer.self, from: Data(response.body.readableBytesView))
                if listed?.sessions.count == 2 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(listed?.user == "ada")
            #expect(Set(listed?.sessions.compactMap(\.client) ?? []) == ["phone", "laptop"])
            #expect(listed?.sessions.filter(\.current).map(\.client) == ["phone"])
            let revoked = try await a.call(.POST, "/api/sessions/revoke-others", jar: laptop)
            #expect(String(buffer: revoked.body) == #"{"node":"a","revoked":1}"#)
            #expect(try await b.demo(.GET, "/api/session", jar: phone).user == nil, "the phone is logged out")
            #expect(try await b.demo(.GET, "/api/session", jar: laptop).user == "ada")
            #expect(try await a.call(.GET, "/api/sessions", jar: CookieJar()).status == .unauthorized)
            #expect(try await a.call(.DELETE, "/api/sessions/AAAAAAAAAAAAAAAAAAAAAA", jar: laptop).status == .notFound)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func idempotentRetriesRunOnce(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let jar = CookieJar()
            _ = try await a.demo(.POST, "/api/counter", jar: jar)
            let key: HTTPHeaders = ["Idempotency-Key": "retry-\(UUID().uuidString)"]
            let first = try await a.call(.POST, "/api/counter", jar: jar, headers: key)
            #expect(String(buffer: first.body) == #"{"node":"a","count":2}"#)
            let retry = try await b.call(.POST, "/api/counter", jar: jar, headers: key)
            #expect(String(buffer: retry.body) == #"{"node":"a","count":2}"#)
            #expect(retry.headers.first(name: "Idempotent-Replayed") == "true")
            #expect(try await b.demo(.GET, "/api/session", jar: jar).count == 2)
            let reused = try await b.call(.POST, "/api/logout", jar: jar, headers: key)
            #expect(reused.status == .unprocessableEntity)
        }
    }

    /// Issue 14, finding 1: an idempotency record is its caller's. A second
    /// client without a cookie that sends the same key and body as a first,
    /// cookieless one that logged in gets the replay without the first
    /// client's session cookie; another session's same key runs its own request.
    @Test(arguments: StoreKind.allCases)
    func idempotencyRecordsAreScopedToTheirCaller(_ kind: StoreKind) async throws {
        try await withNodes(kind) { a, b in
            let key: HTTPHeaders = ["Idempotency-Key": "shared-\(UUID().uuidString)"]
            let login = #"{"user":"ada"}"#
            let first = CookieJar()
            let original = try await a.call(.POST, "/api/login", jar: first, body: login, headers: key)
            #expect(original.status == .ok)
            let firstCookie = try #require(first["sid"], "the login made a session")
            // Another cookieless client, same key and body: the stored answer, no cookie.
            let second = CookieJar()
            let replay = try await b.call(.POST, "/api/login", jar: second, body: login, headers: key)
            #expect(replay.status == .ok)
            #expect(replay.headers.first(name: "Idempotent-Replayed") == "true")
            #expect(replay.headers[.setCookie].isEmpty, "no Set-Cookie in the replay")
            #expect(!String(buffer: replay.body).contains(firstCookie))
            #expect(second["sid"] == nil)
            #expect(try await a.demo(.GET, "/api/session", jar: second) == DemoAnswer(node: "a", count: 0))
            #expect(try await b.demo(.GET, "/api/session", jar: first) == DemoAnswer(node: "b", count: 0, user: "ada"))
            // Sessions: the same key in another session is that session's own request.
            let third = CookieJar()
            _ = try await a.demo(.POST, "/api/counter", jar: third)
            let counted = try await a.call(.POST, "/api/counter", jar: third, headers: key)
            #expect(counted.status == .ok && counted.headers.first(name: "Idempotent-Replayed") == nil)
            #expect(String(buffer: counted.body) == #"{"node":"a","count":2}"#)
            let fourth = CookieJar()
            _ = try await b.demo(.POST, "/api/counter", jar: fourth)
            let own = try await b.call(.POST, "/api/counter", jar: fourth, headers: key)
            #expect(own.status == .ok, "no replay of another session's run")
            #expect(own.headers.first(name: "Idempotent-Replayed") == nil)
            #expect(String(buffer: own.body) == #"{"node":"b","count":2}"#)
            let fifth = CookieJar()
            _ = try await a.demo(.POST, "/api/counter", jar: fifth)
            let other = try await b.call(.POST, "/api/login", jar: fifth, body: #"{"user":"bob"}"#, headers: key)
            #expect(other.status == .ok, "no 422 for a key another session used for another request")
            #expect(other.headers.first(name: "Idempotent-Replayed") == nil)
            #expect(try await a.demo(.GET, "/api/session", jar: fifth) == DemoAnswer(node: "a", count: 1, user: "bob"))
            #expect(try await a.demo(.GET, "/api/session", jar: third).count == 2)
        }
    }
}

/// The routes of each app, for shutting them down.
final class RoutesBox: @unchecked Sendable {  // filled and read by one test task
    private(set) var all: [DemoNodeRoutes] = []
    func append(_ routes: DemoNodeRoutes) { all.append(routes) }
}
