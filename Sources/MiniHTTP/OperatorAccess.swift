#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// Who may use an operator API: a balancer's admin endpoints, the demo's control API.
///
/// Anyone may reach the port, and any web page the operator has open can make the
/// operator's browser send requests to it; so a request is refused unless:
/// - its `Host` is one of `allowedHosts` (nil: `localhost` or a numeric address, with
///   any port): a DNS-rebinding page's requests carry its own host name (403);
/// - its `Origin`, if sent, is `http://` and that `Host`: no cross-origin caller (403);
/// - with a `token`: it carries `Authorization: Bearer TOKEN` (compared in constant
///   time; 401 otherwise);
/// - without one, anything but a GET or HEAD carries `requiredHeader`, if set: a custom
///   header, which a form, a beacon or a `no-cors` fetch cannot send, and a cross-origin
///   `fetch` only after a CORS preflight that is never granted (403).
public struct OperatorAccess: Sendable {
    public var allowedHosts: [String]?
    public var token: [UInt8]?
    public var requiredHeader: (name: String, value: String)?

    public init(allowedHosts: [String]? = nil, token: [UInt8]? = nil, requiredHeader: (name: String, value: String)? = nil) {
        self.allowedHosts = allowedHosts
        self.token = token
        self.requiredHeader = requiredHeader
    }

    /// `127.0.0.1`, `localhost`, `[::1]` and `listenHost`, each with `:port` (and also bare when
    /// `port` is 80, as browsers send it); lowercase.
    public static func localHosts(listenHost: String, port: Int) -> [String] {
        let listen = listenHost.contains(":") ? "[\(listenHost)]" : listenHost
        var hosts: [String] = []
        for name in ["127.0.0.1", "localhost", "[::1]", listen.lowercased()] {
            for host in port == 80 ? ["\(name):80", name] : ["\(name):\(port)"] where !hosts.contains(host) {
                hosts.append(host)
            }
        }
        return hosts
    }

    /// The answer refusing the request (403 or 401), or nil when it may go on.
    public func refusal(method: String, headers: HTTPHeaders, what: String = "operator requests") -> HTTPResponse? {
        guard let host = headers["Host"]?.lowercased(), isAllowed(host: host) else {
            let expected = allowedHosts.map { "Host \($0.joined(separator: ", "))" } ?? "a numeric address or localhost in Host"
            return .error(
                status: 403, code: "unknown_host",
                message: "\(what) must be addressed to this server itself (\(expected)); "
                    + "got \(headers["Host"].map { "Host \($0)" } ?? "no Host")")
        }
        let origins = headers.values(of: "Origin")
        if !origins.isEmpty, origins.map({ Self.withoutDefaultPort($0.lowercased()) }) != [Self.withoutDefaultPort("http://\(host)")] {
            return .error(
                status: 403, code: "cross_origin",
                message: "\(what) from other origins are refused: Origin \(origins.joined(separator: ", ")) is not http://\(host)")
        }
        if let token {
            guard let presented = Self.bearerToken(headers), Self.constantTimeEquals(Array(presented.utf8), token) else {
                var response = HTTPResponse.error(
                    status: 401, code: "unauthorized",
                    message: "\(what) need the header 'Authorization: Bearer TOKEN' with this server's admin token")
                response.headers.add(name: "WWW-Authenticate", value: "Bearer")
                return response
            }
        } else if let required = requiredHeader, method != "GET" && method != "HEAD",
            !headers.values(of: required.name).contains(required.value)
        {
            return .error(
                status: 403, code: "missing_control_header",
                message: "\(method) \(what) need the header '\(required.name): \(required.value)' "
                    + "(curl -H '\(required.name): \(required.value)'); other web pages cannot send it")
        }
        return nil
    }

    private func isAllowed(host: String) -> Bool {
        if let allowedHosts { return allowedHosts.contains(host) }
        return Self.isLocalOrNumeric(host: host)
    }

    /// `localhost` or an IPv4/IPv6 literal, with an optional port: names no DNS can rebind.
    public static func isLocalOrNumeric(host: String) -> Bool {
        var name = Substring(host)
        if name.hasPrefix("[") {
            guard let close = name.firstIndex(of: "]") else { return false }
            let rest = name[name.index(after: close)...]
            guard rest.isEmpty || (rest.hasPrefix(":") && rest.dropFirst().allSatisfy(\.isNumber)) else { return false }
            name = name[name.index(after: name.startIndex)..<close]
            return SocketAddress(host: String(name), port: 0) != nil && name.contains(":")
        }
        if let colon = name.lastIndex(of: ":") {
            guard name[name.index(after: colon)...].allSatisfy(\.isNumber) else { return false }
            name = name[..<colon]
        }
        return name == "localhost" || (SocketAddress(host: String(name), port: 0) != nil && !name.contains(":"))
    }

    /// The token of `Authorization: Bearer TOKEN`, if that is the header's form.
    static func bearerToken(_ headers: HTTPHeaders) -> Substring? {
        guard let value = headers["Authorization"], value.count > 7,
            asciiCaseInsensitiveEquals(value.prefix(7), "Bearer ")
        else { return nil }
        return value.dropFirst(7).drop(while: { $0 == " " })
    }

    /// Compares without an early exit, so the time taken tells nothing about where they differ.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for i in 0..<max(a.count, b.count) {
            difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return difference == 0 && a.count == b.count
    }

    /// `http://h:80` as browsers write it in `Origin`: `http://h`.
    private static func withoutDefaultPort(_ origin: String) -> String {
        origin.hasSuffix(":80") ? String(origin.dropLast(3)) : origin
    }
}
