import Foundation
import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import Synchronization
import SystemSupport
import TestSupport
import Testing

/// A memory store whose `apply` can be made to fail, as a store whose backend
/// went down, or be beaten by another run of the same request.
final class FlakyStore: SessionStore, IdempotencyStore {
    let base = MemorySessionStore()
    let failApply = Atomic<Bool>(false)
    /// When set, the next keyed `apply` finds its key completed with this response
    /// first, as when a retry took over the claim and finished before this run.
    let overtakeWith = Mutex<StoredResponse?>(nil)
    var expiry: SessionExpiry { base.expiry }
    func load(_ id: SessionID) throws -> SessionSnapshot? { try base.load(id) }
    func apply(_ delta: SessionDelta) throws -> AppliedDelta? {
        if failApply.load(ordering: .relaxed) { throw SessionStoreError(.unavailable, "backend is down") }
        if let record = delta.idempotencyRecord, let other = overtakeWith.withLock({ $0.take() }) {
            var winner = record
            winner.response = other
            try base.complete(winner)
        }
        return try base.apply(delta)
    }
    func regenerate(_ id: SessionID, to newID: SessionID) throws -> Bool { try base.regenerate(id, to: newID) }
    func invalidate(_ id: SessionID) throws { try base.invalidate(id) }
    func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim {
        try base.begin(key: key, fingerprint: fingerprint, inProgressMillis: inProgressMillis)
    }
    func complete(_ record: IdempotencyRecord) throws { try base.complete(record) }
    func abandon(key: String) throws { try base.abandon(key: key) }
}

/// A server with idempotency in front of sessions, and a counter that counts every run.
final class IdempotentServer: Sendable {
    let server: HTTPServer
    let runs = Counter()
    let client = CurlClient()
    /// Holds every run of `/count` sent with `X-Hold` until `releaseHeld()` (or 60 s pass).
    let held = DispatchSemaphore(value: 0)

    init(
        store: any SessionStore & IdempotencyStore, waitMillis: Int = 3_000, handlerDelayMillis: UInt32 = 0,
        policy: IdempotencyPolicy = IdempotencyPolicy(), logger: Logger? = nil
    ) throws {
        var policy = policy
        policy.waitMillis = waitMillis
        let logger = logger ?? {
            var quiet = Logger(label: "test")
            quiet.logLevel = .critical
            return quiet
        }()
        let sessions = try SessionConfiguration(signingKey: Array("idempotency tests' signing key, 32+ bytes".utf8))
        let runs = self.runs
        let held = self.held
        var router = Router()
        router.post("/count") { request in
            runs.increment()
            if handlerDelayMillis > 0 { usleep(handlerDelayMillis * 1000) }
            if request.headers["X-Hold"] != nil { _ = held.wait(timeout: .now() + 60) }
            return .json("{\"count\":\(try request.session().increment("count"))}", status: 201)
        }
        router.post("/echo") { request in
            runs.increment()
            return .text(String(decoding: request.body, as: UTF8.self))
        }
        router.get("/read") { request in
            .json("{\"count\":\(try request.session().get("count", as: Int.self) ?? 0)}")
        }
        router.post("/login") { request in
            runs.increment()
            let session = try request.session()
            try session.regenerateID()
            try session.set("user", String(decoding: request.body, as: UTF8.self))
            return .json("{\"welcome\":true}")
        }
        router.get("/whoami") { request in
            .json("{\"user\":\(jsonQuoted(try request.session().get("user", as: String.self) ?? ""))}")
        }
        router.post("/big") { request in
            runs.increment()
            _ = try request.session().increment("big")
            return HTTPResponse(
                status: 200, headers: ["Content-Type": "application/octet-stream"],
                body: [UInt8](repeating: 0x61, count: Int(String(decoding: request.body, as: UTF8.self)) ?? 0))
        }
        server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0, eventLoops: 1, handlerThreads: 8),
            logger: logger,
            middleware: [
                IdempotencyMiddleware(store: store, sessions: sessions, policy: policy, logger: logger),
                SessionMiddleware(store: store, configuration: sessions, logger: logger),
            ],
            responder: router.responder)
        try server.start()
    }

    deinit { server.shutdown() }

    /// Waits (up to 30 s) until a handler started: its request holds the claim.
    func waitUntilRunning() {
        for _ in 0..<3000 where runs.current == 0 { usleep(10_000) }
    }

    func post(_ path: String, key: String?, body: String = "", jar: Bool = true) throws -> CurlClient.Response {
        try client.request(
            "POST", "http://127.0.0.1:\(server.port)\(path)", headers: key.map { ["Idempotency-Key: \($0)"] } ?? [],
            body: body, useJar: jar)
    }

    /// A request from a client whose only cookie is `cookie` (`name=value`), or none.
    /// Lets the runs held by `X-Hold` go on.
    func releaseHeld(_ count: Int = 1) { for _ in 0..<count { held.signal() } }

    func send(
        _ method: String, _ path: String, cookie: String?, key: String? = nil, body: String = "", hold: Bool = false
    ) throws -> CurlClient.Response {
        var headers = key.map { ["Idempotency-Key: \($0)"] } ?? []
        if hold { headers.append("X-Hold: 1") }
        if let cookie { headers.append("Cookie: \(cookie)") }
        return try CurlClient().request(
            method, "http://127.0.0.1:\(server.port)\(path)", headers: headers, body: body,
            useJar: false)
    }
}

@Suite(.serialized, .tags(.integration)) struct IdempotencyMiddlewareTests {
    @Test func aRetriedPOSTIsAnsweredFromTheRecordAndRunsOnce() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        let first = try t.post("/count", key: "k0")  // the session
        let cookie = try #require(first.header("Set-Cookie").first.map { String($0.split(separator: ";")[0]) })
        let keyed = try t.send("POST", "/count", cookie: cookie, key: "k1")
        #expect(keyed.status == 201)
        #expect(keyed.body == "{\"count\":2}")
        // The retry (the first response was lost) gets the same answer, and the handler ran once.
        let retry = try t.send("POST", "/count", cookie: cookie, key: "k1")
        #expect(retry.status == 201)
        #expect(retry.body == "{\"count\":2}")
        #expect(retry.header("Idempotent-Replayed") == ["true"])
        #expect(t.runs.current == 2)
        let read = try t.send("GET", "/read", cookie: cookie)
        #expect(read.body == "{\"count\":2}")
    }

    @Test func aCookielessRetryIsReplayedWithoutTheSessionCookie() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        let first = try t.send("POST", "/count", cookie: nil, key: "k1")
        #expect(first.status == 201)
        #expect(first.header("Set-Cookie").count == 1)
        // The same key and body from a client without a cookie: answered as done, but the cookie
        // of the session the first run made is not handed to whoever sends the same bytes.
        let retry = try t.send("POST", "/count", cookie: nil, key: "k1")
        #expect(retry.status == 201)
        #expect(retry.body == "{\"count\":1}")
        #expect(retry.header("Idempotent-Replayed") == ["true"])
        #expect(retry.header("Set-Cookie").isEmpty)
        #expect(t.runs.current == 1)
    }

    @Test func requestsWithoutAKeyOrWithNewKeysRunEveryTime() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        #expect(try t.post("/count", key: nil).body == "{\"count\":1}")
        #expect(try t.post("/count", key: nil).body == "{\"count\":2}")
        #expect(try t.post("/count", key: "a").body == "{\"count\":3}")
        #expect(try t.post("/count", key: "b").body == "{\"count\":4}")
        #expect(t.runs.current == 4)
    }

    @Test func aKeyReusedForAnotherRequestIs422() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        _ = try t.post("/count", key: nil)  // a session: the cookie jar scopes both requests to it
        #expect(try t.post("/echo", key: "same", body: "one").body == "one")
        let reused = try t.post("/echo", key: "same", body: "two")
        #expect(reused.status == 422)
        #expect(reused.body.contains("idempotency_key_reused"))
        #expect(t.runs.current == 2)
    }

    @Test func invalidKeysAre400() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        let tooLong = try t.post("/echo", key: String(repeating: "x", count: 300), body: "x")
        #expect(tooLong.status == 400)
        #expect(t.runs.current == 0)
    }

    @Test func aConcurrentDuplicateWaitsForTheFirstThenReplaysIt() throws {
        // The duplicate waits up to 30 s for the first, which runs 400 ms: 75 times as long, so a
        // loaded machine cannot turn the wait into a 409.
        let t = try IdempotentServer(store: MemorySessionStore(), waitMillis: 30_000, handlerDelayMillis: 400)
        let results = Mutex<[CurlClient.Response]>([])
        let port = t.server.port
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            if i == 1 { t.waitUntilRunning() }
            if let r = try? CurlClient().request(
                "POST", "http://127.0.0.1:\(port)/count", headers: ["Idempotency-Key: dup"], useJar: false)
            {
                results.withLock { $0.append(r) }
            }
        }
        let all = results.withLock { $0 }
        #expect(all.count == 2)
        #expect(all.allSatisfy { $0.status == 201 && $0.body == "{\"count\":1}" })
        #expect(all.filter { $0.header("Idempotent-Replayed") == ["true"] }.count == 1)
        #expect(t.runs.current == 1)
    }

    @Test func aDuplicateThatWaitsTooLongGets409() throws {
        // The duplicate arrives while the first still runs: the first is held until the duplicate
        // has its answer (at most 60 s), however slowly a loaded machine starts the second curl.
        let t = try IdempotentServer(store: MemorySessionStore(), waitMillis: 100)
        let second = Mutex<CurlClient.Response?>(nil)
        // Threads of their own: the first blocks until released, so the two must not share one.
        let finished = onThreads(2, seconds: 120) { i in
            if i == 0 {
                _ = try? t.send("POST", "/count", cookie: nil, key: "slow", hold: true)
            } else {
                t.waitUntilRunning()
                let r = try? t.send("POST", "/count", cookie: nil, key: "slow")
                second.withLock { $0 = r }
                t.releaseHeld()
            }
        }
        #expect(finished)
        let r = try #require(second.withLock { $0 })
        #expect(r.status == 409)
        #expect(r.body.contains("idempotency_key_in_progress"))
        #expect(t.runs.current == 1)
    }

    @Test func aRequestWhoseSessionWriteFailedLeavesNoRecordAndCanBeRetried() throws {
        let store = FlakyStore()
        let t = try IdempotentServer(store: store)
        store.failApply.store(true, ordering: .relaxed)
        let failed = try t.post("/count", key: "retry-me", jar: false)
        #expect(failed.status == 503)
        store.failApply.store(false, ordering: .relaxed)
        let retried = try t.post("/count", key: "retry-me", jar: false)
        #expect(retried.status == 201)
        #expect(retried.body == "{\"count\":1}")
        #expect(retried.header("Idempotent-Replayed").isEmpty, "the retry really ran")
        let replay = try t.post("/count", key: "retry-me", jar: false)
        #expect(replay.header("Idempotent-Replayed") == ["true"])
        #expect(replay.body == "{\"count\":1}")
    }

    @Test func aRunOvertakenByARetryAnswersWithTheRetrysResponseAndWritesNothing() throws {
        let store = FlakyStore()
        let t = try IdempotentServer(store: store)
        #expect(try t.post("/count", key: "first").body == "{\"count\":1}")
        let winner = StoredResponse(status: 201, headers: [["Content-Type", "application/json"]], body: Array("{\"count\":2}".utf8))
        store.overtakeWith.withLock { $0 = winner }
        let overtaken = try t.post("/count", key: "second")
        #expect(overtaken.status == 201)
        #expect(overtaken.body == "{\"count\":2}", "the answer of the run that completed")
        #expect(overtaken.header("Idempotent-Replayed") == ["true"])
        #expect(t.runs.current == 2)
        let read = try t.client.request("GET", "http://127.0.0.1:\(t.server.port)/read", useJar: true)
        #expect(read.body == "{\"count\":1}", "the overtaken run's increment was not written")
    }
}
