import Logging
import SessionCore
import Testing

/// A response with nothing but headers: the request cycle needs no transport.
private struct Headers: SessionResponseHeaders {
    var setCookies: [String] = []
    var cacheControl: String?

    mutating func appendSetCookie(_ headerValue: String) { setCookies.append(headerValue) }
    mutating func removeSetCookies(named name: String) { setCookies.removeAll { SetCookie.sets($0, cookieNamed: name) } }
    mutating func setNoStore() { cacheControl = "no-store" }
}

private func cookies(_ pairs: [String: String]) -> (String) -> String? { { pairs[$0] } }

/// `SessionRequest` and `IdempotencyGate` on their own, as each binding drives them.
@Suite struct SessionRequestTests {
    let store = MemorySessionStore()
    let configuration = try! SessionConfiguration(signingKey: Array("0123456789abcdef0123456789abcdef".utf8))

    @Test func aRequestThatNeverAsksForItsSessionWritesAndSetsNothing() throws {
        let request = SessionRequest(
            store: store, configuration: configuration, cookie: cookies([:]), remoteAddress: nil, forwardedProto: nil)
        var response = Headers(setCookies: ["theme=dark"])
        #expect(request.prepareCommit(on: &response) == nil)
        #expect(response.setCookies == ["theme=dark"] && response.cacheControl == nil)
        #expect(store.count == 0)
    }

    @Test func aNewSessionGetsASignedHardenedCookieAndNoStore() throws {
        let request = SessionRequest(
            store: store, configuration: configuration, cookie: cookies([:]), remoteAddress: "127.0.0.1",
            forwardedProto: "https, http")
        #expect(request.secure, "a trusted balancer said the client came over HTTPS")
        try request.session().set("user", "ada")
        var response = Headers(setCookies: ["theme=dark"])
        let commit = try #require(request.prepareCommit(on: &response))
        try commit.run(record: nil).apply(to: &response)
        #expect(response.setCookies.count == 2 && response.setCookies[0] == "theme=dark", "the handler's cookie stays")
        let sid = response.setCookies[1]
        #expect(sid.hasPrefix("sid=") && sid.hasSuffix("; Path=/; Secure; HttpOnly; SameSite=Lax"), "\(sid)")
        #expect(response.cacheControl == "no-store")
        // The next request carries it back: the session is found; a forged value is not.
        let value = String(sid.dropFirst(4).prefix { $0 != ";" })
        let next = SessionRequest(
            store: store, configuration: configuration, cookie: cookies(["sid": value]), remoteAddress: "203.0.113.9",
            forwardedProto: "https")
        #expect(!next.secure, "X-Forwarded-Proto from an untrusted peer is ignored")
        #expect(try next.session().get("user", as: String.self) == "ada")
        // Another ID under the same MAC: its first character changed (all six bits of it count;
        // the MAC's last character carries padding bits, so changing that one may change nothing).
        let other = value.first == "A" ? "B" : "A"
        let forged = SessionRequest(
            store: store, configuration: configuration, cookie: cookies(["sid": other + String(value.dropFirst())]),
            remoteAddress: nil, forwardedProto: nil)
        #expect(forged.cookieID == nil)
    }

    @Test func invalidateExpiresTheCookie() throws {
        let first = SessionRequest(
            store: store, configuration: configuration, cookie: cookies([:]), remoteAddress: nil, forwardedProto: nil)
        try first.session().set("user", "ada")
        var created = Headers()
        try #require(first.prepareCommit(on: &created)).run(record: nil).apply(to: &created)
        let value = String(created.setCookies[0].dropFirst(4).prefix { $0 != ";" })
        let second = SessionRequest(
            store: store, configuration: configuration, cookie: cookies(["sid": value]), remoteAddress: nil,
            forwardedProto: nil)
        try second.session().invalidate()
        var response = Headers()
        try #require(second.prepareCommit(on: &response)).run(record: nil).apply(to: &response)
        #expect(response.setCookies == ["sid=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"])
    }

    @Test func aKeyedRequestRunsOnceAndItsRetryIsReplayed() throws {
        let gate = IdempotencyGate(store: store, sessions: configuration, logger: Logger(label: "test"))
        #expect(try gate.keyedRequest(key: nil, method: "POST", target: "/", body: [], cookie: cookies([:])) == nil)
        #expect(try gate.keyedRequest(key: "k-1", method: "GET", target: "/", body: [], cookie: cookies([:])) == nil)
        #expect(throws: SessionErrorAnswer.self) {
            try gate.keyedRequest(key: String(repeating: "k", count: 1000), method: "POST", target: "/", body: [], cookie: cookies([:]))
        }
        let keyed = try #require(try gate.keyedRequest(key: "k-1", method: "POST", target: "/pay", body: [1], cookie: cookies([:])))
        guard case .run(let ticket) = try gate.claim(keyed, waitedMillis: 0) else {
            Issue.record("the first claim runs")
            return
        }
        // A duplicate while it runs waits, then is refused with 409.
        guard case .wait = try gate.claim(keyed, waitedMillis: 0) else {
            Issue.record("a duplicate waits")
            return
        }
        #expect(throws: SessionErrorAnswer.self) { try gate.claim(keyed, waitedMillis: gate.policy.waitMillis) }
        // It changed no session: its record stands alone; a retry is replayed.
        #expect(ticket.needsStandaloneRecord)
        gate.finish(ticket, response: StoredResponse(status: 201, headers: [["X-Paid", "yes"]], body: Array("ok".utf8)))
        guard case .replay(let stored) = try gate.claim(keyed, waitedMillis: 0) else {
            Issue.record("a retry is replayed")
            return
        }
        #expect(stored.status == 201 && stored.body == Array("ok".utf8))
        #expect(stored.headers.contains(["Idempotent-Replayed", "true"]))
        // Anonymous records are per request (no one can pre-empt another's key): another body runs.
        let other = try #require(try gate.keyedRequest(key: "k-1", method: "POST", target: "/pay", body: [2], cookie: cookies([:])))
        guard case .run(let otherTicket) = try gate.claim(other, waitedMillis: 0) else {
            Issue.record("an anonymous request with another body is another request")
            return
        }
        gate.abandon(otherTicket)
        // A session's key reused for another request: 422.
        let sid = configuration.cookieCodec.value(for: SessionID.generate())
        let first = try #require(try gate.keyedRequest(key: "k-2", method: "POST", target: "/pay", body: [1], cookie: cookies(["sid": sid])))
        guard case .run(let sessionTicket) = try gate.claim(first, waitedMillis: 0) else {
            Issue.record("the session's first claim runs")
            return
        }
        gate.finish(sessionTicket, response: StoredResponse(status: 200, headers: [], body: []))
        let reused = try #require(try gate.keyedRequest(key: "k-2", method: "POST", target: "/pay", body: [2], cookie: cookies(["sid": sid])))
        do {
            _ = try gate.claim(reused, waitedMillis: 0)
            Issue.record("a reused key is refused")
        } catch let error as SessionErrorAnswer {
            #expect(error.status == 422)
        }
    }

    @Test func storeErrorsBecomeTheSameAnswersEverywhere() {
        let unavailable = SessionErrorAnswer(SessionStoreError(.unavailable, "redis is down"))
        #expect(unavailable.status == 503 && unavailable.code == "session_store_unavailable" && unavailable.retryAfterSeconds == 1)
        #expect(String(decoding: unavailable.body, as: UTF8.self) == #"{"error":"session_store_unavailable","message":"redis is down"}"#)
        #expect(unavailable.headers.map(\.name) == ["Content-Type", "Retry-After"])
        #expect(SessionErrorAnswer(SessionStoreError(.sessionTooLarge, "big")).status == 413)
        #expect(SessionErrorAnswer(SessionStoreError(.typeMismatch, "x")).code == "session_typeMismatch")
        #expect(SessionErrorAnswer(SessionBusyError(waitedMillis: 5)).code == "session_busy")
        #expect(SessionErrorAnswer.from(CancellationError()) == nil)
    }
}
