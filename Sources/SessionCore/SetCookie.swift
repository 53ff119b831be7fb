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

    /// Whether `name` is an RFC 9110 token (visible ASCII, no separators).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { b in b > 0x20 && b < 0x7F && !separators.contains(b) }
    }

    private static let separators = Set("()<>@,;:\\\"/[]?={}".utf8)

    /// Whether the `Set-Cookie` header value `header` sets the cookie called `name`.
    public static func sets(_ header: String, cookieNamed name: String) -> Bool {
        guard let eq = header.firstIndex(of: "=") else { return false }
        var cookie = header[..<eq]
        while cookie.first == " " { cookie.removeFirst() }
        while cookie.last == " " { cookie.removeLast() }
        return cookie == name
    }

    /// The header value. Invalid names or values are a programming error.
    public var headerValue: String {
        precondition(Self.isValidName(name), "invalid cookie name \(name)")
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
