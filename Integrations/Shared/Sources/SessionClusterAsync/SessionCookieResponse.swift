import SessionCore

/// What the session machinery needs of a framework's response type: adding
/// and removing `Set-Cookie` headers, `Cache-Control: no-store`, and (for
/// requests with an `Idempotency-Key`) a copy of the whole response to keep.
public protocol SessionCookieResponse {
    /// Adds a `Set-Cookie` header with this value.
    mutating func appendSetCookie(_ headerValue: String)
    /// Removes the `Set-Cookie` headers that set the cookie called `name` (and no others).
    mutating func removeSetCookies(named name: String)
    /// Replaces `Cache-Control` with `no-store` (responses that carry a new session ID).
    mutating func setNoStore()
    /// The response as kept for idempotent replays: status, headers and the
    /// whole body (a streamed body is collected, and the response keeps a
    /// buffered copy so it can still be sent).
    mutating func storedResponse() async throws -> StoredResponse
}

/// Helpers for `Set-Cookie` header values.
public enum SetCookieHeader {
    /// Whether the `Set-Cookie` header value `header` sets the cookie called `name`.
    public static func sets(_ header: String, cookieNamed name: String) -> Bool {
        guard let eq = header.firstIndex(of: "=") else { return false }
        var cookie = header[..<eq]
        while cookie.first == " " { cookie.removeFirst() }
        while cookie.last == " " { cookie.removeLast() }
        return cookie == name
    }
}
