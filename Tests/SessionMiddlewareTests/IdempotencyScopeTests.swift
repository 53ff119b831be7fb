import Dispatch
import Foundation
import Logging
import MiniHTTP
import SessionCore
import SessionMiddleware
import Synchronization
import Testing
import TestSupport

/// The attacks on idempotency records of issue 14: a record is a stored
/// response, and a response may carry a session cookie. Each test sends what
/// an attacker would and checks that nothing of another client comes back.
@Suite(.serialized, .tags(.integration)) struct IdempotencyScopeTests {
    /// The cookie (`sid=...`) a response set, if any.
    private func sessionCookie(_ response: CurlClient.Response) -> String? {
        response.header("Set-Cookie").first { $0.hasPrefix("sid=") && !$0.hasPrefix("sid=;") }
            .map { String($0.split(separator: ";")[0]) }
    }

    /// A client with a session of its own.
    private func newSession(_ t: IdempotentServer) throws -> String {
        try #require(sessionCookie(try t.send("POST", "/count", cookie: nil)))
    }

    @Test func anotherClientSendingTheSameKeyAndBodyNeverGetsTheLoginCookie() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        // Alice logs in with a key, without a session first (the exact case) ...
        let alice = try t.send("POST", "/login", cookie: nil, key: "K1", body: "alice")
        let aliceCookie = try #require(sessionCookie(alice))
        #expect(try t.send("GET", "/whoami", cookie: aliceCookie).body == "{\"user\":\"alice\"}")
        // ... the attacker sends the same key and body without a cookie: never alice's cookie.
        let attacker = try t.send("POST", "/login", cookie: nil, key: "K1", body: "alice")
        #expect(attacker.header("Set-Cookie").allSatisfy { !$0.contains(aliceCookie) })
        #expect(sessionCookie(attacker) == nil)
        // ... nor with a session of its own: its request runs in its own session.
        let mallory = try newSession(t)
        let withSession = try t.send("POST", "/login", cookie: mallory, key: "K1", body: "alice")
        #expect(withSession.header("Idempotent-Replayed").isEmpty, "a session's key is its own")
        let malloryNew = try #require(sessionCookie(withSession))
        #expect(malloryNew != aliceCookie)
        #expect(try t.send("GET", "/whoami", cookie: aliceCookie).body == "{\"user\":\"alice\"}", "alice untouched")
    }

    @Test func aLoginRetriedWithItsOwnSessionCookieGetsItsNewCookie() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        let before = try newSession(t)
        let login = try t.send("POST", "/login", cookie: before, key: "login-1", body: "ada")
        let after = try #require(sessionCookie(login))
        // The response was lost: the client retries with the cookie it had; the replay gives it the new one.
        let retry = try t.send("POST", "/login", cookie: before, key: "login-1", body: "ada")
        #expect(retry.header("Idempotent-Replayed") == ["true"])
        #expect(sessionCookie(retry) == after)
        #expect(t.runs.current == 2)  // the session's first request, and one login
    }

    @Test func aKeyPlayedFirstByAnAttackerDoesNotAnswerTheVictim() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        // The attacker plays a guessable key first, with and without a session of its own.
        let attacker = try newSession(t)
        _ = try t.send("POST", "/count", cookie: attacker, key: "order-1")
        _ = try t.send("POST", "/count", cookie: nil, key: "order-1")
        // The victim's request with that key runs, in the victim's session.
        let victim = try newSession(t)
        let answer = try t.send("POST", "/count", cookie: victim, key: "order-1")
        #expect(answer.header("Idempotent-Replayed").isEmpty)
        #expect(answer.body == "{\"count\":2}")
        #expect(sessionCookie(answer) == nil, "the victim keeps its session")
    }

    @Test func reusedKeysDiscloseNothingAcrossSessions() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        let alice = try newSession(t)
        let bob = try newSession(t)
        #expect(try t.send("POST", "/echo", cookie: alice, key: "shared", body: "one").body == "one")
        // Another session, or no session, with the same key and another body: runs (no 422 that
        // would tell that the key exists).
        let other = try t.send("POST", "/echo", cookie: bob, key: "shared", body: "two")
        #expect(other.status == 200)
        #expect(other.body == "two")
        let anonymous = try t.send("POST", "/echo", cookie: nil, key: "shared", body: "three")
        #expect(anonymous.status == 200)
        #expect(anonymous.body == "three")
        // Anonymous records are told apart by their body too: never a 422 between two cookieless clients.
        #expect(try t.send("POST", "/echo", cookie: nil, key: "shared", body: "four").body == "four")
        // Within one session, the reuse is still refused.
        #expect(try t.send("POST", "/echo", cookie: alice, key: "shared", body: "five").status == 422)
    }

    @Test func aRunInProgressInOneSessionDoesNotHoldUpAnother() throws {
        // Alice's run is held until bob has his answer: bob's request runs while alice's claim is open.
        let t = try IdempotentServer(store: MemorySessionStore())
        let alice = try newSession(t)
        let bob = try newSession(t)
        let bobAnswer = Mutex<CurlClient.Response?>(nil)
        // Threads of their own: alice's blocks until released, so the two must not share one.
        let finished = onThreads(2, seconds: 120) { i in
            if i == 0 {
                _ = try? t.send("POST", "/count", cookie: alice, key: "busy", hold: true)
            } else {
                for _ in 0..<3000 where t.runs.current < 3 { usleep(10_000) }  // two sessions made, alice's run started
                let r = try? t.send("POST", "/count", cookie: bob, key: "busy")
                bobAnswer.withLock { $0 = r }
                t.releaseHeld()
            }
        }
        #expect(finished)
        let answer = try #require(bobAnswer.withLock { $0 })
        #expect(answer.status == 201, "not 409: alice's claim is not visible to bob")
        #expect(answer.body == "{\"count\":2}")
        #expect(answer.header("Idempotent-Replayed").isEmpty)
    }

    @Test func aForgedCookieScopesNothing() throws {
        let t = try IdempotentServer(store: MemorySessionStore())
        let alice = try newSession(t)
        _ = try t.send("POST", "/login", cookie: alice, key: "K", body: "alice")
        // A cookie with alice's old ID but a wrong signature counts as no session at all.
        let id = alice.dropFirst("sid=".count).split(separator: ".")[0]
        let forged = "sid=\(id).AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        let answer = try t.send("POST", "/login", cookie: forged, key: "K", body: "alice")
        #expect(answer.header("Idempotent-Replayed").isEmpty)
        #expect(sessionCookie(answer) != nil, "a new session, not alice's")
        #expect(t.runs.current == 3)
    }

    @Test func aResponseTooLargeToKeepIsAnsweredOnceAndItsRetryRefusedClearly() throws {
        let t = try IdempotentServer(store: MemorySessionStore(), policy: IdempotencyPolicy(maxStoredResponseBytes: 1024))
        let session = try newSession(t)
        let big = try t.send("POST", "/big", cookie: session, key: "big-1", body: "5000")
        #expect(big.status == 200)
        #expect(big.body.utf8.count == 5000)
        let retry = try t.send("POST", "/big", cookie: session, key: "big-1", body: "5000")
        #expect(retry.status == 409)
        #expect(retry.body.contains("idempotency_response_not_kept"))
        #expect(t.runs.current == 2, "the retry did not run again")
        let small = try t.send("POST", "/big", cookie: session, key: "small-1", body: "10")
        #expect(small.body.utf8.count == 10)
        #expect(try t.send("POST", "/big", cookie: session, key: "small-1", body: "10").header("Idempotent-Replayed") == ["true"])
    }

    @Test func logsNameKeysByAHashNeverInClear() throws {
        let lines = LogCapture()
        let store = FlakyStore()
        let logger = Logger(label: "capture", factory: { _ in lines })
        let t = try IdempotentServer(store: store, logger: logger)
        let session = try newSession(t)
        // An overtaken run logs a notice naming its record.
        store.overtakeWith.withLock {
            $0 = StoredResponse(status: 201, headers: [], body: Array("{\"count\":9}".utf8))
        }
        #expect(try t.send("POST", "/count", cookie: session, key: "secret-key-123").body == "{\"count\":9}")
        let text = lines.text
        #expect(text.contains("another run of this request completed first"))
        #expect(text.contains("idempotency_record"))
        #expect(!text.contains("secret-key-123"))
    }
}

/// A log handler that keeps every line (message and metadata) in memory.
final class LogCapture: LogHandler, @unchecked Sendable {  // lines behind a mutex; the rest is set once
    private let lines = Mutex<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = (event.metadata ?? [:]).map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")
        lines.withLock { $0.append("\(event.level) \(event.message) \(fields)") }
    }

    var text: String { lines.withLock { $0.joined(separator: "\n") } }
}
