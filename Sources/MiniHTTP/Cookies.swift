/// Parses a `Cookie` request header (RFC 6265 §5.4 cookie-string).
///
/// Pairs without `=` or with an empty name are skipped; values keep their
/// bytes (surrounding double quotes are removed). Later duplicates follow
/// earlier ones, so the first match is the most specific per RFC 6265.
public func parseCookieHeader(_ header: String) -> [(name: String, value: String)] {
    var result: [(name: String, value: String)] = []
    for pair in header.split(separator: ";", omittingEmptySubsequences: true) {
        guard let eq = pair.firstIndex(of: "=") else { continue }
        let name = trimmedOWS(pair[..<eq])
        var value = trimmedOWS(pair[pair.index(after: eq)...])
        guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else { continue }
        if value.utf8.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
            value = String(value.dropFirst().dropLast())
        }
        result.append((name: name, value: value))
    }
    return result
}

extension HTTPRequest {
    /// The first value of the cookie called `name`, across all `Cookie` headers.
    /// (Scans bytes: it runs on every request, and string splitting was a tenth of the node's CPU.)
    public func cookie(_ name: String) -> String? {
        for header in headers.values(of: "Cookie") {
            if let value = findCookie(name, in: header) { return value }
        }
        return nil
    }
}

/// The value of the first `name=value` pair in a cookie-string, parsed as `parseCookieHeader` does.
func findCookie(_ name: String, in header: String) -> String? {
    var header = header
    return header.withUTF8 { bytes -> String? in
        var name = name
        return name.withUTF8 { wanted -> String? in
            var i = 0
            let n = bytes.count
            while i < n {
                // One pair: [i, end) up to the next ';'.
                var end = i
                while end < n && bytes[end] != 59 { end += 1 }
                var a = i
                while a < end && (bytes[a] == 32 || bytes[a] == 9) { a += 1 }
                if let eq = (a..<end).first(where: { bytes[$0] == 61 }) {
                    var nameEnd = eq
                    while nameEnd > a && (bytes[nameEnd - 1] == 32 || bytes[nameEnd - 1] == 9) { nameEnd -= 1 }
                    if nameEnd - a == wanted.count && (0..<wanted.count).allSatisfy({ bytes[a + $0] == wanted[$0] }) {
                        var v = eq + 1
                        var e = end
                        while v < e && (bytes[v] == 32 || bytes[v] == 9) { v += 1 }
                        while e > v && (bytes[e - 1] == 32 || bytes[e - 1] == 9) { e -= 1 }
                        if e - v >= 2 && bytes[v] == 34 && bytes[e - 1] == 34 {
                            v += 1
                            e -= 1
                        }
                        return String(decoding: UnsafeBufferPointer(rebasing: bytes[v..<e]), as: UTF8.self)
                    }
                }
                i = end + 1
            }
            return nil
        }
    }
}

/// A `Set-Cookie` response header value (RFC 6265 §4.1).
public struct SetCookie: Sendable, Equatable {
    public enum SameSite: String, Sendable {
        case strict = "Strict"
        case lax = "Lax"
        case none = "None"
    }

    public var name: String
    public var value: String
    public var path: String?
    public var domain: String?
    /// Seconds; 0 or less expires the cookie at once.
    public var maxAge: Int?
    public var secure: Bool
    public var httpOnly: Bool
    public var sameSite: SameSite?

    public init(
        name: String, value: String, path: String? = "/", domain: String? = nil, maxAge: Int? = nil,
        secure: Bool = false, httpOnly: Bool = true, sameSite: SameSite? = .lax
    ) {
        self.name = name
        self.value = value
        self.path = path
        self.domain = domain
        self.maxAge = maxAge
        self.secure = secure
        self.httpOnly = httpOnly
        self.sameSite = sameSite
    }

    /// Whether `value` only holds RFC 6265 cookie-octets.
    public static func isValidValue(_ value: String) -> Bool {
        value.utf8.allSatisfy { b in
            b == 0x21 || (b >= 0x23 && b <= 0x2B) || (b >= 0x2D && b <= 0x3A) || (b >= 0x3C && b <= 0x5B)
                || (b >= 0x5D && b <= 0x7E)
        }
    }

    /// The header value. Invalid names or values are a programming error.
    public var headerValue: String {
        precondition(!name.isEmpty && name.utf8.allSatisfy(isTokenByte), "invalid cookie name \(name)")
        precondition(SetCookie.isValidValue(value), "invalid cookie value for \(name)")
        var s = "\(name)=\(value)"
        if let path { s += "; Path=\(path)" }
        if let domain { s += "; Domain=\(domain)" }
        if let maxAge {
            s += "; Max-Age=\(max(0, maxAge))"
            if maxAge <= 0 { s += "; Expires=Thu, 01 Jan 1970 00:00:00 GMT" }
        }
        if secure { s += "; Secure" }
        if httpOnly { s += "; HttpOnly" }
        if let sameSite { s += "; SameSite=\(sameSite.rawValue)" }
        return s
    }
}

extension HTTPResponse {
    /// Adds a `Set-Cookie` header.
    public mutating func setCookie(_ cookie: SetCookie) {
        headers.add(name: "Set-Cookie", value: cookie.headerValue)
    }
}
