import SessionCore
import Testing

@Suite("Set-Cookie")
struct SetCookieTests {
    @Test func setCookieDefaults() {
        let cookie = SetCookie(name: "sid", value: "abc123")
        #expect(cookie.headerValue == "sid=abc123; Path=/; HttpOnly; SameSite=Lax")
    }

    @Test func setCookieWithEveryAttribute() {
        let cookie = SetCookie(
            name: "sid", value: "v-1_2.3", path: "/app", domain: "example.test", maxAge: 3600, secure: true,
            httpOnly: true, sameSite: .strict)
        #expect(
            cookie.headerValue == "sid=v-1_2.3; Path=/app; Domain=example.test; Max-Age=3600; Secure; HttpOnly; SameSite=Strict")
    }

    @Test func setCookieWithoutOptionalAttributes() {
        let cookie = SetCookie(name: "a", value: "", path: nil, httpOnly: false, sameSite: nil)
        #expect(cookie.headerValue == "a=")
        let none = SetCookie(name: "x", value: "1", path: nil, secure: true, httpOnly: false, sameSite: SetCookie.SameSite.none)
        #expect(none.headerValue == "x=1; Secure; SameSite=None")
    }

    @Test(arguments: [0, -1, -3600])
    func setCookieExpiryForNonPositiveMaxAge(maxAge: Int) {
        let cookie = SetCookie(name: "sid", value: "", maxAge: maxAge)
        #expect(cookie.headerValue == "sid=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax")
    }

    @Test func positiveMaxAgeHasNoExpires() {
        let value = SetCookie(name: "sid", value: "x", maxAge: 1).headerValue
        #expect(value.contains("Max-Age=1"))
        #expect(!value.contains("Expires"))
    }

    @Test func validValueCharacters() {
        #expect(SetCookie.isValidValue("abcXYZ019!#$%&'()*+-./:<=>?@[]^_`{|}~"))
        #expect(SetCookie.isValidValue(""))
        for bad in [" ", "\"", ",", ";", "\\", "\u{7F}", "\u{1}", "é", "a b"] {
            #expect(!SetCookie.isValidValue(bad), "\(bad.debugDescription) is not a cookie-octet")
        }
    }

    @Test func namesAreTokens() {
        #expect(SetCookie.isValidName("sid") && SetCookie.isValidName("sid_rt") && SetCookie.isValidName("a.b-c!"))
        for bad in ["", "a b", "a=b", "a;b", "a\"b", "é", "a\u{7F}", "(a)"] {
            #expect(!SetCookie.isValidName(bad), "\(bad.debugDescription) is not a token")
        }
    }

    @Test func aHeaderSetsTheCookieOfItsNameOnly() {
        #expect(SetCookie.sets("sid=abc; Path=/", cookieNamed: "sid"))
        #expect(SetCookie.sets(" sid =abc", cookieNamed: "sid"))
        #expect(!SetCookie.sets("sid_rt=abc; Path=/", cookieNamed: "sid"))
        #expect(!SetCookie.sets("xsid=abc", cookieNamed: "sid"))
        #expect(!SetCookie.sets("no equals sign", cookieNamed: "sid"))
    }
}
