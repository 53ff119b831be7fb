import MiniHTTP
import SessionCore
import SessionMiddleware
import Testing

/// MiniHTTP's response as the request cycle edits it (`SessionResponseHeaders`).
@Suite struct ResponseHeadersTests {
    @Test func setCookiesAreAddedOnePerHeaderAndRemovedByNameOnly() {
        var response = HTTPResponse.text("ok")
        response.headers.add(name: "Cache-Control", value: "max-age=60")
        response.appendSetCookie(SetCookie(name: "sid", value: "1").headerValue)
        response.appendSetCookie(SetCookie(name: "sid_rt", value: "2").headerValue)
        response.appendSetCookie(SetCookie(name: "theme", value: "dark", maxAge: 0).headerValue)
        #expect(response.headers.values(of: "set-cookie").count == 3)
        response.removeSetCookies(named: "sid")
        let left = response.headers.values(of: "set-cookie")
        #expect(left.count == 2 && left[0].hasPrefix("sid_rt=2;") && left[1].contains("Max-Age=0"))
        response.setNoStore()
        #expect(response.headers.values(of: "cache-control") == ["no-store"])
    }

    @Test func aStoredResponseRoundTrips() {
        var response = HTTPResponse.json(#"{"ok":true}"#, status: 201)
        response.headers.add(name: "X-A", value: "1")
        let replayed = HTTPResponse(StoredResponse(response))
        #expect(replayed.status == 201 && replayed.body == response.body)
        #expect(replayed.headers.values(of: "x-a") == ["1"])
    }

    @Test func anErrorAnswerIsTheSameJSONError() {
        let error = HTTPError(SessionErrorAnswer(SessionStoreError(.unavailable, "down")))
        #expect(error.status == 503 && error.headers["Retry-After"] == "1")
        #expect(error.response.body == SessionErrorAnswer(SessionStoreError(.unavailable, "down")).body)
    }
}
