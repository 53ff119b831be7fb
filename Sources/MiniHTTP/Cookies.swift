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
        head.headers.firstValue(of: "Cookie") { findCookie(name, in: $0) }
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
