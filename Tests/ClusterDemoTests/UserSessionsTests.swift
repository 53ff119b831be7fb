import Foundation
import Synchronization
import Testing
import TestSupport

/// The body of `GET /api/sessions`.
private struct UserSessions: Decodable {
    struct Entry: Decodable, Equatable {
        var handle: String
        var createdAt: Int64
        var lastAccess: Int64
        var node: String?
        var client: String?
        var current: Bool
    }
    var user: String
    var sessions: [Entry]
}

/// "Your devices" through real node processes, on each store: logins from three cookie jars on
/// three nodes, revoke-others, revoking one by handle, and the per-user limit.
@Suite(.serialized, .timeLimit(.minutes(3)), .tags(.integration))
struct UserSessionsTests {
    enum Store: String, CaseIterable, CustomTestStringConvertible {
        case replicateSync = "replicate-sync", replicateAsync = "replicate-async", redis
        var testDescription: String { rawValue }
        /// Whether every node sees a write as soon as it is answered.
        var readsAreCurrent: Bool { self != .replicateAsync }
    }

    /// Starts a, b and c on `store` with `extra` arguments, runs `body`, stops every process.
    private static func withNodes(_ store: Store, _ extra: [String] = [], _ body: (NodeProcesses) throws -> Void) throws {
        let redis = store == .redis ? try RedisServerProcess() : nil
        defer { redis?.kill() }
        let nodes = try NodeProcesses(
            mode: store == .replicateSync ? "sync" : "async", redisPort: redis?.port, extraArguments: extra)
        defer { nodes.stopAll() }
        try nodes.startAll()
        try #require(nodes.waitHealthy(), "the nodes did not become healthy:\n\(nodes.output)")
        try body(nodes)
    }

    private static func logIn(_ jar: CurlClient, _ nodes: NodeProcesses, _ i: Int, as user: String, agent: String) throws -> CurlClient.Response {
        try jar.request(
            "POST", nodes.url(i, "/api/login"), headers: ["User-Agent: \(agent)", "Content-Type: application/json"],
            body: "{\"user\":\"\(user)\"}")
    }

    private static func sessions(_ jar: CurlClient, _ nodes: NodeProcesses, _ i: Int) throws -> UserSessions? {
        let response = try jar.request("GET", nodes.url(i, "/api/sessions"))
        guard response.status == 200 else { return nil }
        return try? JSONDecoder().decode(UserSessions.self, from: Data(response.body.utf8))
    }

    /// The user `jar` is logged in as, as node `i` sees it.
    private static func user(_ jar: CurlClient, _ nodes: NodeProcesses, _ i: Int) throws -> String? {
        decode(try jar.request("GET", nodes.url(i, "/api/session")))?.user
    }

    /// Polls `condition` for up to 3 s when the store's copies may lag (async), once otherwise.
    private static func eventually(_ store: Store, _ condition: () throws -> Bool) rethrows -> Bool {
        if store.readsAreCurrent { return try condition() }
        let deadline = Date().addingTimeInterval(3)
        while Date() < deadline {
            if try condition() { return true }
            usleep(50_000)
        }
        return try condition()
    }

    @Test(arguments: Store.allCases)
    func threeJarsOnThreeNodesListTheSameSessionsAndRevokeOthersLogsTheOthersOutEverywhere(_ store: Store) throws {
        try Self.withNodes(store) { nodes in
            let jars = (0..<3).map { _ in CurlClient() }
            for i in 0..<3 {
                let login = try Self.logIn(jars[i], nodes, i, as: "ada", agent: "jar-\(i)")
                #expect(login.status == 200, "\(login.body)")
            }
            // Each jar, on another node than the one it logged in on, sees the same three sessions.
            var lists: [UserSessions?] = []
            let converged = try Self.eventually(store) {
                lists = try (0..<3).map { try Self.sessions(jars[$0], nodes, ($0 + 1) % 3) }
                return lists.allSatisfy { $0?.sessions.count == 3 }
            }
            #expect(converged, "\(lists)\n\(nodes.output)")
            let handles = lists.map { Set($0?.sessions.map(\.handle) ?? []) }
            #expect(handles.allSatisfy { $0 == handles[0] && $0.count == 3 })
            for (i, list) in lists.enumerated() {
                let mine = list?.sessions.filter(\.current) ?? []
                #expect(mine.count == 1 && mine.first?.client == "jar-\(i)", "jar \(i): \(String(describing: list))")
                #expect(list?.user == "ada")
            }
            #expect(Set(lists[0]?.sessions.compactMap(\.node) ?? []) == ["a", "b", "c"], "each names the node it logged in on")

            let revoke = try jars[0].request("POST", nodes.url(0, "/api/sessions/revoke-others"))
            #expect(revoke.status == 200 && revoke.body.contains("\"revoked\":2"), "\(revoke.body)")
            for node in 0..<3 {
                #expect(try Self.user(jars[0], nodes, node) == "ada", "the revoking jar stays logged in on node \(node)")
                for jar in 1..<3 {
                    let loggedOut = try Self.eventually(store) { try Self.user(jars[jar], nodes, node) == nil }
                    #expect(loggedOut, "jar \(jar) still logged in on node \(nodes.names[node])")
                }
            }
            #expect(try Self.sessions(jars[0], nodes, 2)?.sessions.count == 1)
            #expect(try jars[1].request("GET", nodes.url(1, "/api/sessions")).status == 401)
        }
    }

    @Test(arguments: Store.allCases)
    func aHandleEndsOnlyOneOfTheUsersOwnSessions(_ store: Store) throws {
        try Self.withNodes(store) { nodes in
            let (phone, laptop, eve) = (CurlClient(), CurlClient(), CurlClient())
            _ = try Self.logIn(phone, nodes, 0, as: "ada", agent: "phone")
            _ = try Self.logIn(laptop, nodes, 1, as: "ada", agent: "laptop")
            _ = try Self.logIn(eve, nodes, 2, as: "eve", agent: "eve")
            var laptopHandle: String?
            var eveHandle: String?
            _ = try Self.eventually(store) {
                laptopHandle = try Self.sessions(phone, nodes, 0)?.sessions.first { $0.client == "laptop" }?.handle
                eveHandle = try Self.sessions(eve, nodes, 2)?.sessions.first?.handle
                return laptopHandle != nil && eveHandle != nil
            }
            let other = try #require(laptopHandle)
            let eves = try #require(eveHandle)
            // Another user's handle, a malformed one, and no login at all.
            #expect(try phone.request("DELETE", nodes.url(0, "/api/sessions/\(eves)")).status == 404)
            #expect(try Self.user(eve, nodes, 1) == "eve", "ada must not end eve's session")
            #expect(try phone.request("DELETE", nodes.url(0, "/api/sessions/not-a-handle")).status == 404)
            #expect(try CurlClient().request("DELETE", nodes.url(0, "/api/sessions/\(other)")).status == 401)
            let revoked = try phone.request("DELETE", nodes.url(0, "/api/sessions/\(other)"))
            #expect(revoked.status == 200, "\(revoked.body)")
            #expect(try Self.eventually(store) { try Self.user(laptop, nodes, 1) == nil })
            #expect(try Self.user(phone, nodes, 2) == "ada")
        }
    }

    @Test(arguments: Store.allCases)
    func overTheLimitTheLeastRecentlyUsedSessionIsLoggedOut(_ store: Store) throws {
        try Self.withNodes(store, ["--max-sessions-per-user", "2"]) { nodes in
            let (first, second, third) = (CurlClient(), CurlClient(), CurlClient())
            _ = try Self.logIn(first, nodes, 0, as: "ada", agent: "first")
            usleep(20_000)
            _ = try Self.logIn(second, nodes, 1, as: "ada", agent: "second")
            #expect(try Self.eventually(store) { try Self.sessions(first, nodes, 2)?.sessions.count == 2 })
            usleep(20_000)
            #expect(try first.request("POST", nodes.url(2, "/api/counter")).status == 200)  // first is used again
            usleep(20_000)
            // The login node must have merged the use of `first` before it chooses (async: wait for it).
            #expect(try Self.eventually(store) {
                try Self.sessions(first, nodes, 0)?.sessions.first(where: \.current).map { $0.lastAccess > $0.createdAt } ?? false
            })
            let login = try Self.logIn(third, nodes, 0, as: "ada", agent: "third")
            #expect(login.status == 200)
            #expect(try Self.eventually(store) { try Self.user(second, nodes, 2) == nil }, "the least recently used session goes")
            #expect(try Self.user(first, nodes, 1) == "ada")
            let clients = try Self.sessions(third, nodes, 0)?.sessions.compactMap(\.client)
            #expect(Set(clients ?? []) == ["first", "third"])
        }
    }

    /// 8 logins of one user at once, on 3 nodes, under a limit of 3: once the cluster settles
    /// (replicate: the sessions left over the limit are ended by their owners at a sweep), every
    /// node lists the same 3 sessions, and the nodes reported exactly 5 evictions between them.
    @Test(arguments: Store.allCases)
    func eightLoginsAtOnceUnderALimitOfThreeLeaveThreeAndFiveEvictions(_ store: Store) throws {
        try Self.withNodes(store, ["--max-sessions-per-user", "3", "--sweep-interval-ms", "200"]) { nodes in
            let jars = (0..<8).map { _ in CurlClient() }
            let failures = Mutex<[String]>([])
            let urls = (0..<8).map { nodes.url($0 % 3, "/api/login") }
            DispatchQueue.concurrentPerform(iterations: 8) { i in
                do {
                    let login = try jars[i].request(
                        "POST", urls[i], headers: ["User-Agent: jar-\(i)", "Content-Type: application/json"],
                        body: "{\"user\":\"ada\"}")
                    if login.status != 200 { failures.withLock { $0.append("\(login.status) \(login.body)") } }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
            #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
            func evictions() -> Int {
                (0..<3).reduce(0) { total, i in
                    let samples = prometheusSamples(nodes.metrics(i))
                    return total + Int(samples["session_events_total{node=\"\(nodes.names[i])\",kind=\"evicted\"}"] ?? 0)
                }
            }
            var lists: [Set<String>] = []
            let settled = waitUntil(timeout: 15) {
                let kept = jars.filter { (try? Self.user($0, nodes, 0)) == "ada" }
                guard let jar = kept.first else { return false }
                lists = (0..<3).map { i in Set((try? Self.sessions(jar, nodes, i))?.sessions.map(\.handle) ?? []) }
                return kept.count == 3 && lists.allSatisfy { $0.count == 3 && $0 == lists[0] } && evictions() >= 5
            }
            #expect(settled, "lists \(lists.map(\.count)), \(evictions()) evictions\n\(nodes.output)")
            usleep(600_000)  // three more sweeps: a late duplicate would show
            #expect(evictions() == 5)
            let loggedIn = try jars.filter { try Self.user($0, nodes, 1) == "ada" }.count
            #expect(loggedIn == 3, "\(loggedIn) jars logged in on node b")
        }
    }

    @Test(arguments: Store.allCases)
    func withRefuseTheLoginPastTheLimitGets409AndNothingChanges(_ store: Store) throws {
        try Self.withNodes(store, ["--max-sessions-per-user", "2", "--when-exceeded", "refuse"]) { nodes in
            let jars = (0..<3).map { _ in CurlClient() }
            _ = try Self.logIn(jars[0], nodes, 0, as: "ada", agent: "one")
            _ = try Self.logIn(jars[1], nodes, 1, as: "ada", agent: "two")
            #expect(try Self.eventually(store) { try Self.sessions(jars[0], nodes, 2)?.sessions.count == 2 })
            _ = try jars[2].request("POST", nodes.url(2, "/api/counter"))  // an anonymous session with a count
            let refused = try Self.logIn(jars[2], nodes, 2, as: "ada", agent: "three")
            #expect(refused.status == 409)
            #expect(refused.body.contains("\"error\":\"session_limit_reached\""), "\(refused.body)")
            let after = try #require(decode(try jars[2].request("GET", nodes.url(2, "/api/session"))))
            #expect(after.user == nil && after.count == 1, "the refused client keeps its session as it was")
            #expect(Set(try Self.sessions(jars[0], nodes, 0)?.sessions.compactMap(\.client) ?? []) == ["one", "two"])
        }
    }
}
