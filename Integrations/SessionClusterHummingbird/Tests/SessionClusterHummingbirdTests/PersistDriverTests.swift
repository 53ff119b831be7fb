import Foundation
import Hummingbird
import HummingbirdAuth
import HummingbirdTesting
import NIOCore
import SessionClusterAsync
import SessionClusterHummingbird
import SessionClusterTestKit
import SessionCore
import Testing

/// The `PersistDriver` contract (as hummingbird's own PersistTests and
/// `MemoryPersistDriver` define it) on the memory, Redis and replicated
/// stores; on the replicated store, reads go to the other node.
@Suite struct PersistDriverTests {
    /// Two drivers: one per node (the same store for memory), the second one
    /// reading what the first wrote.
    func withDrivers(
        _ kind: StoreKind, clock: SessionClock = .system,
        _ body: (SessionStorePersistDriver, SessionStorePersistDriver) async throws -> Void
    ) async throws {
        try await withExecutor { executor in
            try await withStores(kind, expiry: SessionExpiry(idleTimeoutMillis: 3_600_000)) { stores in
                let namespace = "persist-\(UUID().uuidString):"
                let drivers = stores.nodes.map {
                    SessionStorePersistDriver(store: $0, executor: executor, clock: clock, namespace: namespace)
                }
                try await body(drivers[0], drivers[drivers.count - 1])
            }
        }
    }

    struct TestCodable: Codable, Equatable {
        let buffer: String
    }

    @Test(arguments: StoreKind.allCases)
    func setThenGet(_ kind: StoreKind) async throws {
        try await withDrivers(kind) { a, b in
            try await a.set(key: "tag", value: "Persist")
            #expect(try await b.get(key: "tag", as: String.self) == "Persist")
            try await a.set(key: "tag", value: "test2")
            #expect(try await b.get(key: "tag", as: String.self) == "test2")
            #expect(try await b.get(key: "missing", as: String.self) == nil)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func createThenGetAndDoubleCreateFails(_ kind: StoreKind) async throws {
        try await withDrivers(kind) { a, b in
            try await a.create(key: "tag", value: "Persist")
            #expect(try await b.get(key: "tag", as: String.self) == "Persist")
            await #expect(throws: PersistError.duplicate) { try await b.create(key: "tag", value: "Other") }
            #expect(try await a.get(key: "tag", as: String.self) == "Persist")  // the failed create wrote nothing
        }
    }

    @Test(arguments: [StoreKind.memory, .redis])
    func concurrentCreatesLetExactlyOneWin(_ kind: StoreKind) async throws {
        try await withDrivers(kind) { a, b in
            for round in 0..<10 {
                let key = "race-\(round)"
                let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for i in 0..<8 {
                        let driver = i % 2 == 0 ? a : b
                        group.addTask {
                            do {
                                try await driver.create(key: key, value: "writer-\(i)")
                                return true
                            } catch let error as PersistError where error == .duplicate {
                                return false
                            }
                        }
                    }
                    return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                }
                #expect(wins == 1, "round \(round): \(wins) creates succeeded")
                #expect(try await a.get(key: key, as: String.self)?.hasPrefix("writer-") == true)
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func expiresAndCanBeAddedAgain(_ kind: StoreKind) async throws {
        let clock = ManualClock()
        try await withDrivers(kind, clock: clock.clock) { a, b in
            try await a.set(key: "short", value: "ThisIsTest1", expires: .seconds(1))
            try await a.set(key: "long", value: "ThisIsTest2", expires: .seconds(10))
            #expect(try await b.get(key: "short", as: String.self) == "ThisIsTest1")
            clock.advance(millis: 1_000)
            #expect(try await b.get(key: "short", as: String.self) == nil)
            #expect(try await b.get(key: "long", as: String.self) == "ThisIsTest2")
            // An expired key can be created again, and set without an expiry lives on.
            try await b.create(key: "short", value: "again", expires: .seconds(10))
            #expect(try await a.get(key: "short", as: String.self) == "again")
            clock.advance(millis: 10_000)
            #expect(try await a.get(key: "long", as: String.self) == nil)
            try await a.set(key: "long", value: "no expiry now")
            clock.advance(millis: 100_000)
            #expect(try await b.get(key: "long", as: String.self) == "no expiry now")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func setWithoutExpiryKeepsTheTTL(_ kind: StoreKind) async throws {
        let clock = ManualClock()
        try await withDrivers(kind, clock: clock.clock) { a, b in
            try await a.set(key: "tag", value: "one", expires: .seconds(10))
            clock.advance(millis: 4_000)
            try await b.set(key: "tag", value: "two")  // nil: keeps the 10 s
            let (value, ttl) = try #require(try await a.getWithTTL(key: "tag", as: String.self))
            #expect(value == "two")
            #expect(ttl == .seconds(6))
            clock.advance(millis: 6_000)
            #expect(try await b.get(key: "tag", as: String.self) == nil)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func ttlIsTheTimeLeft(_ kind: StoreKind) async throws {
        try await withDrivers(kind) { a, b in
            try await a.set(key: "tag", value: "ThisIsTest2", expires: .seconds(10))
            let ttl = try #require(try await b.getWithTTL(key: "tag", as: String.self)?.ttl)
            // Redis counts the TTL down in real time: the lower bounds leave 5 s (10 min) for the
            // round trips between the write and the read, far more than a loaded machine takes,
            // and still tell the entry's own expiry from the store's idle timeout.
            #expect(ttl <= .seconds(10) && ttl > .seconds(5))
            // Without an expiry of its own, the store's idle timeout (1 hour here) bounds it.
            try await a.set(key: "plain", value: "x")
            let plain = try #require(try await b.getWithTTL(key: "plain", as: String.self)?.ttl)
            #expect(plain <= .seconds(3_600) && plain > .seconds(3_000))
        }
    }

    @Test(arguments: StoreKind.allCases)
    func codableValuesAndInvalidConversion(_ kind: StoreKind) async throws {
        try await withDrivers(kind) { a, b in
            try await a.set(key: "codable", value: TestCodable(buffer: "Persist"))
            #expect(try await b.get(key: "codable", as: TestCodable.self) == TestCodable(buffer: "Persist"))
            await #expect(throws: PersistError.invalidConversion) { try await b.get(key: "codable", as: String.self) }
            await #expect(throws: PersistError.invalidConversion) {
                try await b.getWithTTL(key: "codable", as: Int.self)
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func remove(_ kind: StoreKind) async throws {
        try await withDrivers(kind) { a, b in
            try await a.set(key: "tag", value: "ThisIsTest1")
            try await b.remove(key: "tag")
            #expect(try await a.get(key: "tag", as: String.self) == nil)
            try await b.remove(key: "never-there")
        }
    }
}

/// hummingbird-auth's `SessionMiddleware` on our driver: the "one-line
/// switch" an app makes, with its sessions surviving a request to another node.
@Suite struct HummingbirdAuthSessionTests {
    struct User: Codable, Sendable, Equatable {
        var name: String
        var visits: Int
    }

    typealias Context = BasicSessionRequestContext<User, User>

    static func router(persist: any PersistDriver, node: String) -> Router<Context> {
        let router = Router(context: Context.self)
        router.add(middleware: SessionMiddleware(storage: persist))  // ← the one line: storage
        router.post("/login") { request, context -> String in
            let name = String(buffer: try await request.body.collect(upTo: 1024))
            context.sessions.createSession(User(name: name, visits: 0), expiresIn: .seconds(600))
            return "\(node): welcome \(name)"
        }
        router.post("/visit") { _, context -> String in
            guard var user = context.sessions.session else { throw HTTPError(.unauthorized) }
            user.visits += 1
            _ = context.sessions.updateSession(user)
            return "\(node): \(user.name) \(user.visits)"
        }
        router.post("/logout") { _, context -> String in
            context.sessions.clearSession()
            return "\(node): bye"
        }
        return router
    }

    @Test(arguments: StoreKind.allCases)
    func sessionSurvivesARequestToTheOtherNode(_ kind: StoreKind) async throws {
        try await withExecutor { executor in
            try await withStores(kind) { stores in
                let drivers = stores.nodes.map { SessionStorePersistDriver(store: $0, executor: executor) }
                let nodeA = Application(router: Self.router(persist: drivers[0], node: "a"))
                let nodeB = Application(router: Self.router(persist: drivers[drivers.count - 1], node: "b"))
                try await nodeA.test(.router) { a in
                    try await nodeB.test(.router) { b in
                        let jar = CookieJar()
                        let login = try await a.call(.post, "/login", jar: jar, body: "ada")
                        #expect(String(buffer: login.body) == "a: welcome ada")
                        #expect(jar["SESSION_ID"] != nil)
                        let visits = [a, b, a, b, b]
                        for (i, node) in visits.enumerated() {
                            let response = try await node.call(.post, "/visit", jar: jar)
                            #expect(response.status == .ok)
                            #expect(String(buffer: response.body).hasSuffix("ada \(i + 1)"))
                        }
                        #expect(try await b.call(.post, "/logout", jar: jar).status == .ok)
                        #expect(jar["SESSION_ID"] == nil)
                        #expect(try await a.call(.post, "/visit", jar: CookieJar()).status == .unauthorized)
                    }
                }
            }
        }
    }
}
