import Foundation
import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import SessionRedis
import Synchronization
import Testing
import TestSupport

// MARK: - Helpers (file-private: other files of this target define their own)

/// What happened, in order, across the lock, the store and the handler.
private final class EventLog: Sendable {
    private let events = Mutex<[String]>([])
    func add(_ event: String) { events.withLock { $0.append(event) } }
    var all: [String] { events.withLock { $0 } }
    func clear() { events.withLock { $0.removeAll() } }
}

/// A lock without Redis that grants, refuses or fails as told, and logs.
private final class ScriptedLock: SessionRequestLock {
    enum Behavior: Sendable { case grant, busy, down }
    let log: EventLog
    let behavior: Behavior

    init(log: EventLog, behavior: Behavior) {
        self.log = log
        self.behavior = behavior
    }

    func acquire(_ id: SessionID) throws -> SessionLockLease {
        log.add("lock \(id.rawValue)")
        switch behavior {
        case .grant: break
        case .busy: throw SessionBusyError(waitedMillis: 7)
        case .down: throw SessionStoreError(.unavailable, "lock backend is down")
        }
        return SessionLockLease(sessionID: id) { [log] in log.add("unlock") }
    }
}

/// A memory store that logs loads and writes.
private final class LoggingStore: SessionStore {
    let base = MemorySessionStore()
    let log: EventLog
    init(log: EventLog) { self.log = log }
    var expiry: SessionExpiry { base.expiry }
    func load(_ id: SessionID) throws -> SessionSnapshot? {
        log.add("load")
        return try base.load(id)
    }
    func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        log.add("apply")
        return try base.apply(delta)
    }
    func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool { try base.regenerate(id, to: newID) }
    func invalidate(_ id: SessionID) throws { try base.invalidate(id) }
}

/// The routes of these tests. `/bump` is a deliberately non-atomic
/// read-modify-write of one attribute: read, wait, write.
private func counterRouter(log: EventLog? = nil, bumpDelayMillis: UInt32 = 0) -> Router {
    var router = Router()
    router.post("/bump") { request in
        log?.add("handler")
        let session = try request.session()
        let n = try session.get("n", as: Int.self) ?? 0
        if bumpDelayMillis > 0 { usleep(bumpDelayMillis * 1000) }
        try session.set("n", n + 1)
        return .json("{\"n\":\(n + 1)}")
    }
    router.get("/read") { request in
        .json("{\"n\":\(try request.session().get("n", as: Int.self) ?? 0)}")
    }
    router.get("/nothing") { _ in
        log?.add("handler")
        return .text("no session used")
    }
    router.post("/refuse") { _ in
        log?.add("handler")
        throw HTTPError(status: 409, code: "conflict", message: "refused by the handler")
    }
    return router
}

/// The `sid` value a response sets.
private func sessionCookie(_ response: HTTPResponse) -> String? {
    guard let header = response.headers["Set-Cookie"], header.hasPrefix("sid=") else { return nil }
    return String(header.dropFirst(4).prefix { $0 != ";" })
}

private func request(_ method: String, _ path: String, cookie: String? = nil) -> HTTPRequest {
    var headers: HTTPHeaders = ["Host": "localhost"]
    if let cookie { headers.add(name: "Cookie", value: "sid=\(cookie)") }
    return HTTPRequest(method: method, target: path, headers: headers)
}

private func bodyText(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }

/// A node: the session middleware (optionally exclusive) on a real loopback socket.
private final class CounterNode {
    let server: HTTPServer

    init(store: any SessionStore, exclusive: (any SessionRequestLock)?, bumpDelayMillis: UInt32 = 20) throws {
        let logger = quietLogger()
        server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0, eventLoops: 1, handlerThreads: 12),
            logger: logger,
            middleware: [
                SessionMiddleware(store: store, configuration: SessionConfiguration(exclusive: exclusive), logger: logger)
            ],
            responder: counterRouter(bumpDelayMillis: bumpDelayMillis).responder)
        try server.start()
    }

    deinit { server.shutdown() }

    var url: String { "http://127.0.0.1:\(server.port)" }
}

/// One "node" of a Redis-backed cluster: its own client, store and lock, shared keys.
private func redisNode(prefix: String, exclusive: Bool, waitMillis: Int = 10_000) throws -> CounterNode {
    let url = ProcessInfo.processInfo.environment["REDIS_URL"] ?? "redis://127.0.0.1:6379"
    var configuration = try RedisConfiguration(url: url)
    configuration.poolSize = 16
    let client = RedisClient(configuration: configuration, logger: quietLogger())
    let store = RedisSessionStore(client: client, keyPrefix: prefix + "sess:", logger: quietLogger())
    let lock = DistributedSessionLock.redis(
        client: client, keyPrefix: prefix + "lock:", leaseMillis: 2000, waitMillis: waitMillis, logger: quietLogger())
    return try CounterNode(store: store, exclusive: exclusive ? lock : nil)
}

private let redisAvailable = ProcessInfo.processInfo.environment["REDIS_URL"] != nil

// MARK: - Without Redis: what the middleware does with a lock

@Suite struct ExclusiveModeMiddlewareTests {
    private func chain(_ lock: ScriptedLock, store: any SessionStore, signingKey: [UInt8]? = nil) -> MiddlewareChain {
        let configuration = try! SessionConfiguration(signingKey: signingKey, exclusive: lock)
        return MiddlewareChain(
            [SessionMiddleware(store: store, configuration: configuration, logger: quietLogger())],
            responder: counterRouter(log: lock.log).responder)
    }

    @Test func handlerAndCommitRunInsideTheLockOnlyForRequestsWithASession() throws {
        let log = EventLog()
        let store = LoggingStore(log: log)
        let chain = chain(ScriptedLock(log: log, behavior: .grant), store: store)

        // No cookie: nothing to serialize yet, no lock.
        let first = chain.respond(to: request("POST", "/bump"))
        #expect(first.status == 200)
        let cookie = try #require(sessionCookie(first))
        #expect(log.all == ["handler", "apply"])

        // With the session's cookie: lock, handler, load, write, unlock — in that order.
        log.clear()
        let second = chain.respond(to: request("POST", "/bump", cookie: cookie))
        #expect(bodyText(second) == "{\"n\":2}")
        #expect(log.all == ["lock \(cookie)", "handler", "load", "apply", "unlock"])

        // A route that never touches the session still runs inside the lock (the ID is known).
        log.clear()
        #expect(chain.respond(to: request("GET", "/nothing", cookie: cookie)).status == 200)
        #expect(log.all == ["lock \(cookie)", "handler", "unlock"])

        // A malformed cookie is no session ID: no lock.
        log.clear()
        #expect(chain.respond(to: request("GET", "/nothing", cookie: "not-a-session-id")).status == 200)
        #expect(log.all == ["handler"])
    }

    @Test func aWronglySignedCookieTakesNoLock() throws {
        let log = EventLog()
        let key = Array("0123456789abcdef0123456789abcdef".utf8)
        let chain = chain(ScriptedLock(log: log, behavior: .grant), store: LoggingStore(log: log), signingKey: key)
        let forged = SessionID.generate().rawValue + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        #expect(chain.respond(to: request("GET", "/nothing", cookie: forged)).status == 200)
        #expect(log.all == ["handler"])
    }

    @Test func aBusySessionIsA503WithRetryAfterAndTheHandlerNeverRuns() throws {
        let log = EventLog()
        let store = LoggingStore(log: log)
        let existing = SessionID.generate()
        _ = try store.base.apply(SessionDelta(id: existing, changes: [.set("n", Array("5".utf8))], createIfMissing: true))
        log.clear()
        let chain = chain(ScriptedLock(log: log, behavior: .busy), store: store)
        let response = chain.respond(to: request("POST", "/bump", cookie: existing.rawValue))
        #expect(response.status == 503)
        #expect(bodyText(response).contains("\"error\":\"session_busy\""))
        #expect(response.headers["Retry-After"] == "1")
        #expect(log.all == ["lock \(existing.rawValue)"], "no handler, no load, no write")
        #expect(try store.base.load(existing)?.attributes["n"] == Array("5".utf8))
        // Without a session there is nothing to wait for.
        #expect(chain.respond(to: request("GET", "/nothing")).status == 200)
    }

    @Test func aLockBackendOutageIsA503StoreUnavailable() throws {
        let log = EventLog()
        let chain = chain(ScriptedLock(log: log, behavior: .down), store: LoggingStore(log: log))
        let response = chain.respond(to: request("POST", "/bump", cookie: SessionID.generate().rawValue))
        #expect(response.status == 503)
        #expect(bodyText(response).contains("\"error\":\"session_store_unavailable\""))
        #expect(response.headers["Retry-After"] == "1")
        #expect(!log.all.contains("handler"))
    }

    @Test func handlerErrorsPassThroughTheLockUnchanged() throws {
        let log = EventLog()
        let chain = chain(ScriptedLock(log: log, behavior: .grant), store: LoggingStore(log: log))
        let cookie = SessionID.generate().rawValue
        let response = chain.respond(to: request("POST", "/refuse", cookie: cookie))
        #expect(response.status == 409)
        #expect(bodyText(response).contains("\"error\":\"conflict\""))
        #expect(log.all == ["lock \(cookie)", "handler", "unlock"])
    }

    @Test func aRedisLockThatCannotReachRedisIsA503OverHTTP() throws {
        // Sessions in memory, the lock's Redis on a port nothing listens on.
        let client = RedisClient(
            configuration: RedisConfiguration(endpoint: .direct(host: "127.0.0.1", port: 1), connectTimeoutMillis: 200),
            logger: quietLogger())
        let node = try CounterNode(
            store: MemorySessionStore(), exclusive: DistributedSessionLock.redis(client: client, logger: quietLogger()),
            bumpDelayMillis: 0)
        let curl = CurlClient()
        let first = try curl.request("POST", node.url + "/bump", useJar: true)
        #expect(first.status == 200, "a request without a session takes no lock")
        let second = try curl.request("POST", node.url + "/bump", useJar: true)
        #expect(second.status == 503)
        #expect(second.body.contains("\"error\":\"session_store_unavailable\""))
        #expect(second.header("Retry-After") == ["1"])
    }
}

// MARK: - With Redis: two nodes, one session, concurrent read-modify-writes

@Suite(.enabled(if: redisAvailable, "needs REDIS_URL"), .serialized, .tags(.integration))
struct ExclusiveModeTests {
    /// 8 clients share one session cookie and each sends `perClient`
    /// read–wait(20 ms)–write requests, alternating between two nodes.
    /// Returns the final value and every status seen.
    private func hammer(exclusive: Bool, perClient: Int) throws -> (final: Int, statuses: [Int: Int]) {
        let prefix = "test:\(UUID().uuidString.prefix(8)):"
        let nodes = [try redisNode(prefix: prefix, exclusive: exclusive), try redisNode(prefix: prefix, exclusive: exclusive)]
        let setup = CurlClient()
        let created = try setup.request("POST", nodes[0].url + "/bump")
        #expect(created.status == 200)
        let cookie = try #require(setup.cookie("sid"))

        let statuses = Mutex<[Int: Int]>([:])
        let urls = nodes.map(\.url)
        let finished = onThreads(8, seconds: 120) { client in
            let curl = CurlClient()
            for i in 0..<perClient {
                let status = (try? curl.request(
                    "POST", urls[(client + i) % 2] + "/bump", headers: ["Cookie: sid=\(cookie)"], useJar: false).status) ?? -1
                statuses.withLock { $0[status, default: 0] += 1 }
            }
        }
        try #require(finished, "clients did not finish in time")
        let read = try setup.request("GET", nodes[1].url + "/read")
        let final = try #require(Int(read.body.dropFirst(5).dropLast()), "body \(read.body)")
        return (final - 1, statuses.withLock { $0 })  // minus the request that created the session
    }

    @Test func exclusiveModeLosesNoReadModifyWriteUpdateAcrossNodes() throws {
        let perClient = 8
        let (final, statuses) = try hammer(exclusive: true, perClient: perClient)
        #expect(statuses == [200: 8 * perClient], "every request answered 200: \(statuses)")
        #expect(final == 8 * perClient, "lost \(8 * perClient - final) of \(8 * perClient) updates")
    }

    @Test func withoutExclusiveModeTheSameWorkloadLosesUpdates() throws {
        // The control experiment: shows the workload above really races, so the
        // exact count there is the lock's doing. Eight clients, 20 ms windows: lost
        // updates are all but certain.
        let perClient = 8
        let (final, statuses) = try hammer(exclusive: false, perClient: perClient)
        #expect(statuses == [200: 8 * perClient])
        #expect(final < 8 * perClient, "no update was lost without the lock (\(final))")
        print("without exclusive mode: \(final) of \(8 * perClient) updates survived")
    }

    @Test func aSessionLockedElsewhereIsA503SessionBusy() throws {
        let prefix = "test:\(UUID().uuidString.prefix(8)):"
        let node = try redisNode(prefix: prefix, exclusive: true, waitMillis: 200)
        let curl = CurlClient()
        #expect(try curl.request("POST", node.url + "/bump").status == 200)
        let id = try #require(curl.cookie("sid").flatMap(SessionID.init(rawValue:)))

        // Another node holds this session's lock (same key layout).
        let client = RedisClient(configuration: try RedisConfiguration(url: ProcessInfo.processInfo.environment["REDIS_URL"]!), logger: quietLogger())
        let otherNode = DistributedSessionLock.redis(client: client, keyPrefix: prefix + "lock:", logger: quietLogger()).lock.service as! RedisLock
        let lease = try #require(try otherNode.tryAcquire(id.rawValue, ttlMillis: 10_000))
        let start = ContinuousClock.now
        let busy = try curl.request("POST", node.url + "/bump")
        let waited = ContinuousClock.now - start
        #expect(busy.status == 503)
        #expect(busy.body.contains("\"error\":\"session_busy\""))
        #expect(busy.header("Retry-After") == ["1"])
        // Only a lower bound, which load cannot break: the request waited its 200 ms for the lock.
        #expect(waited >= .milliseconds(200))
        // A request without the session is not held up.
        #expect(try curl.request("GET", node.url + "/nothing", useJar: false).status == 200)

        #expect(try otherNode.release(lease))
        let after = try curl.request("POST", node.url + "/bump")
        #expect(after.status == 200)
        #expect(after.body == "{\"n\":2}", "the refused request changed nothing")
    }
}
