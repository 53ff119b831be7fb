import SessionCore

/// An idempotency record completed without a session change
/// (`IdempotencyStore.complete`), replicated on its own. (A record written
/// with a delta rides in that delta's `SessionUpdate` instead.)
///
/// Wire form (`encode(into:)`): expiry (i64 ms since 1970), key, fingerprint,
/// status (u32), header count (u32) and each header as a count of strings,
/// body (length-prefixed), TTL (i64 ms) — the record in the same layout as
/// inside a `SessionUpdate`.
package struct ReplicatedRecord: Sendable, Equatable {
    public var record: IdempotencyRecord
    /// When peers forget the record (ms since 1970): the same instant on every node.
    public var expiresAtMillis: Int64

    public init(record: IdempotencyRecord, expiresAtMillis: Int64) {
        self.record = record
        self.expiresAtMillis = expiresAtMillis
    }

    public func encode(into w: inout WireWriter) {
        w.i64(expiresAtMillis)
        record.encode(into: &w)
    }

    /// Reads what `encode(into:)` wrote, with `SessionUpdate`'s limits; does not require the end of input.
    public init(from r: inout WireReader) throws(WireError) {
        let expiresAt = try r.i64()
        self.init(record: try IdempotencyRecord(from: &r), expiresAtMillis: expiresAt)
    }
}
