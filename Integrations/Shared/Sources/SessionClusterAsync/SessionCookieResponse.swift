import SessionCore

/// What the session machinery needs of a framework's response type: its
/// `Set-Cookie` and `Cache-Control` headers (`SessionResponseHeaders`) and,
/// for requests with an `Idempotency-Key`, a copy of the whole response to keep.
public protocol SessionCookieResponse: SessionResponseHeaders {
    /// The response as kept for idempotent replays: status, headers and the
    /// whole body (a streamed body is collected, and the response keeps a
    /// buffered copy so it can still be sent).
    mutating func storedResponse() async throws -> StoredResponse
}
