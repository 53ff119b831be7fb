#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// One simulated user's cookies: the minimum a browser does for one origin.
///
/// Every `Set-Cookie` is stored as `name=value` (a later one with the same
/// name replaces it) and sent back in `Cookie`. `Max-Age` ≤ 0 or an
/// `Expires` in the past deletes the cookie; a positive `Max-Age` (which wins
/// over `Expires`, RFC 6265 §5.3) or a future `Expires` is honoured when the
/// cookie is sent. `Path`, `Domain`, `Secure` and the rest are ignored: the
/// benchmark talks to one loopback origin.
public struct CookieJar: Sendable, Equatable {
    private struct Entry: Sendable, Equatable {
        var name: String
        var value: String
        /// Seconds since 1970 after which the cookie is gone; nil for a session cookie.
        var expires: Int64?
    }

    private var entries: [Entry] = []

    public init() {}

    /// Stores one `Set-Cookie` header value received at `now` (seconds since 1970).
    /// A header without `name=` is ignored.
    public mutating func store(setCookie header: String, now: Int64 = wallClockMillis() / 1000) {
        var parts = header.split(separator: ";", omittingEmptySubsequences: false).makeIterator()
        guard let pair = parts.next(), let eq = pair.firstIndex(of: "=") else { return }
        let name = pair[..<eq].strippingOWS
        guard !name.isEmpty else { return }
        var value = pair[pair.index(after: eq)...].strippingOWS
        if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
        var maxAge: Int64?
        var expires: Int64?
        while let attribute = parts.next() {
            let (key, argument) = Self.split(attribute)
            if key == "max-age", let seconds = Int64(argument) {
                maxAge = seconds
            } else if key == "expires", let date = parseHTTPDate(argument) {
                expires = date
            }
        }
        let expiry = maxAge.map { $0 <= 0 ? Int64.min : now + $0 } ?? expires
        entries.removeAll { $0.name == name }
        if let expiry, expiry <= now { return }
        entries.append(Entry(name: name, value: value, expires: expiry))
    }

    /// The `Cookie` header to send at `now`, or nil when the jar has nothing to send.
    public func cookieHeader(now: Int64 = wallClockMillis() / 1000) -> String? {
        let live = entries.filter { $0.expires.map { $0 > now } ?? true }
        return live.isEmpty ? nil : live.map { "\($0.name)=\($0.value)" }.joined(separator: "; ")
    }

    /// The current value of cookie `name`, if stored and not expired.
    public func value(of name: String, now: Int64 = wallClockMillis() / 1000) -> String? {
        entries.first { $0.name == name && ($0.expires.map { $0 > now } ?? true) }?.value
    }

    /// Forgets every cookie.
    public mutating func removeAll() { entries.removeAll() }

    private static func split(_ attribute: Substring) -> (key: String, argument: String) {
        guard let eq = attribute.firstIndex(of: "=") else { return (attribute.strippingOWS.lowercased(), "") }
        return (attribute[..<eq].strippingOWS.lowercased(), attribute[attribute.index(after: eq)...].strippingOWS)
    }
}

/// Parses an HTTP date in the preferred IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`)
/// or the RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`) into seconds since 1970.
func parseHTTPDate(_ text: String) -> Int64? {
    let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    let tokens = text.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "-" }).map { $0.lowercased() }
    guard tokens.count >= 5, let day = Int(tokens[1]), let monthIndex = months.firstIndex(of: String(tokens[2].prefix(3))),
        var year = Int(tokens[3])
    else { return nil }
    if year < 70 { year += 2000 } else if year < 100 { year += 1900 }
    let clock = tokens[4].split(separator: ":").compactMap { Int($0) }
    guard clock.count == 3, (1...31).contains(day), (0...23).contains(clock[0]), (0...59).contains(clock[1]),
        (0...60).contains(clock[2])
    else { return nil }
    var parts = tm()
    parts.tm_year = Int32(year - 1900)
    parts.tm_mon = Int32(monthIndex)
    parts.tm_mday = Int32(day)
    parts.tm_hour = Int32(clock[0])
    parts.tm_min = Int32(clock[1])
    parts.tm_sec = Int32(clock[2])
    return Int64(timegm(&parts))
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    var strippingOWS: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}
