/// Settings of the session cookie and middleware.
public struct SessionConfiguration: Sendable {
    public var cookieName: String
    /// Always mark the cookie `Secure`. When false it is still marked `Secure`
    /// for requests that arrived over HTTPS through a trusted balancer.
    public var secureCookie: Bool
    /// Peer addresses whose `X-Forwarded-Proto` is believed (the balancers).
    public var trustedProxies: Set<String>
    /// Signs and verifies cookie values. With signing keys, values are
    /// `<id>.<HMAC-SHA256(id)>`: forged or tampered IDs are rejected without
    /// a store lookup. Set through the throwing initializers or `setSigningKeys`.
    public private(set) var cookieCodec: SessionCookieCodec
    /// Cookie `Domain`, if any.
    public var cookieDomain: String?
    /// Exclusive mode: when set, the requests of one session run one at a
    /// time across the cluster (see `ExclusiveSessions.swift`).
    public var exclusive: (any SessionRequestLock)?

    /// The cookie carrying the read token of stores with read-your-writes
    /// (`ReadYourWritesStore.readToken`): `<cookieName>_rt`.
    public var readTokenCookieName: String { cookieName + "_rt" }

    /// The signing keys (the first signs, all verify); empty for unsigned cookies.
    public var signingKeys: [[UInt8]] { cookieCodec.signingKeys }

    /// Unsigned cookies (see the `signingKeys:` initializer).
    public init(
        cookieName: String = "sid", secureCookie: Bool = false, trustedProxies: Set<String> = ["127.0.0.1", "::1"],
        cookieDomain: String? = nil, exclusive: (any SessionRequestLock)? = nil
    ) {
        self.cookieName = cookieName
        self.secureCookie = secureCookie
        self.trustedProxies = trustedProxies
        cookieCodec = .unsigned
        self.cookieDomain = cookieDomain
        self.exclusive = exclusive
    }

    /// Signed cookies: the first of `signingKeys` signs, every one verifies
    /// (rotation). Throws for a key shorter than 16 bytes.
    public init(
        signingKeys: [[UInt8]], cookieName: String = "sid", secureCookie: Bool = false,
        trustedProxies: Set<String> = ["127.0.0.1", "::1"], cookieDomain: String? = nil,
        exclusive: (any SessionRequestLock)? = nil
    ) throws(SigningKeyError) {
        self.init(
            cookieName: cookieName, secureCookie: secureCookie, trustedProxies: trustedProxies,
            cookieDomain: cookieDomain, exclusive: exclusive)
        try setSigningKeys(signingKeys)
    }

    /// One signing key, or nil for unsigned cookies. Throws for a key shorter than 16 bytes.
    public init(
        signingKey: [UInt8]?, cookieName: String = "sid", secureCookie: Bool = false,
        trustedProxies: Set<String> = ["127.0.0.1", "::1"], cookieDomain: String? = nil,
        exclusive: (any SessionRequestLock)? = nil
    ) throws(SigningKeyError) {
        try self.init(
            signingKeys: signingKey.map { [$0] } ?? [], cookieName: cookieName, secureCookie: secureCookie,
            trustedProxies: trustedProxies, cookieDomain: cookieDomain, exclusive: exclusive)
    }

    /// Replaces the signing keys (the first signs, all verify).
    public mutating func setSigningKeys(_ keys: [[UInt8]]) throws(SigningKeyError) {
        cookieCodec = try SessionCookieCodec(signingKeys: keys)
    }

    /// Whose idempotency records a request sees, from the value of its session
    /// cookie (nil: none): its verified session, or nobody's.
    public func idempotencyScope(cookieValue: String?) -> IdempotencyScope {
        cookieValue.flatMap(cookieCodec.verifiedID).map { .session($0) } ?? .anonymous
    }

    /// Whether a response's cookies get `Secure`: always when `secureCookie`, else when a
    /// trusted balancer (`trustedProxies`) says the client came over HTTPS (`X-Forwarded-Proto`).
    public func isSecure(remoteAddress: String?, forwardedProto: String?) -> Bool {
        if secureCookie { return true }
        guard let remoteAddress, trustedProxies.contains(remoteAddress), let forwardedProto else { return false }
        // With several proxies the first value is the client's.
        var first = Substring(forwardedProto.split(separator: ",").first ?? "")
        while first.first == " " { first.removeFirst() }
        while first.last == " " { first.removeLast() }
        return first.lowercased() == "https"
    }

    /// A cookie of this configuration (`Path=/`, its domain, `HttpOnly`, `SameSite=Lax`).
    public func cookie(name: String, value: String, secure: Bool, maxAge: Int? = nil) -> SetCookie {
        SetCookie(
            name: name, value: value, path: "/", domain: cookieDomain, maxAge: maxAge, secure: secure, httpOnly: true,
            sameSite: .lax)
    }
}
