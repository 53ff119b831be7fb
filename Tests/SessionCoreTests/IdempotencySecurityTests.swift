import Foundation
import SessionCore
import SystemSupport
import Testing

/// Limits on idempotency records, the scope of their storage keys, cookie
/// signing keys and secrets from the environment (issue 14).
@Suite struct IdempotencySecurityTests {
    private struct Value: IdempotencyTableValue {
        var expiresAt: Int64 = .max
        var byteCount: Int = 10
    }

    private func anonymousKey(_ i: Int) -> String { IdempotencyScope.anonymousKeyPrefix + "k\(i)" }
    private func sessionKey(_ i: Int) -> String { IdempotencyScope.sessionKeyPrefix + "k\(i)" }

    @Test func anonymousRecordsEvictOnlyEachOtherPastTheirCap() {
        var table = IdempotencyRecordTable<Value>(limits: IdempotencyLimits(maxRecords: 100, maxAnonymousRecords: 10))
        for i in 0..<5 { table[sessionKey(i)] = Value() }
        for i in 0..<50 { table[anonymousKey(i)] = Value() }
        #expect(table.stats.anonymousRecords == 10)
        #expect(table.stats.records == 15)
        #expect(table.stats.evictions == 40)
        #expect((0..<5).allSatisfy { table[sessionKey($0)] != nil }, "a flood of anonymous records keeps the sessions' ones")
        #expect(table[anonymousKey(39)] == nil)
        #expect((40..<50).allSatisfy { table[anonymousKey($0)] != nil }, "the newest stay")
    }

    @Test func pastTheTotalCapsTheOldestGoAnonymousFirst() {
        var table = IdempotencyRecordTable<Value>(
            limits: IdempotencyLimits(maxRecords: 20, maxAnonymousRecords: 20, maxBytes: 1 << 20))
        for i in 0..<5 { table[anonymousKey(i)] = Value() }
        for i in 0..<25 { table[sessionKey(i)] = Value() }
        #expect(table.stats.records == 20)
        #expect(table.stats.anonymousRecords == 0)
        #expect(table[sessionKey(4)] == nil && table[sessionKey(5)] != nil)
        // Bytes: each record costs its key, its value and 64 bytes of bookkeeping.
        var bytes = IdempotencyRecordTable<Value>(limits: IdempotencyLimits(maxBytes: 10_000))
        for i in 0..<1_000 { bytes[sessionKey(i)] = Value(byteCount: 1_000) }
        #expect(bytes.stats.bytes <= 10_000)
        #expect(bytes.stats.records == 9)
    }

    @Test func replacingAndRemovingKeepTheCountsRight() {
        var table = IdempotencyRecordTable<Value>(limits: IdempotencyLimits(maxRecords: 3, maxAnonymousRecords: 3))
        for _ in 0..<100 { table[sessionKey(1)] = Value() }  // one key, replaced: its stale queue entries never evict it
        table[sessionKey(2)] = Value()
        table[sessionKey(3)] = Value()
        #expect(table.stats.records == 3 && table.stats.evictions == 0)
        table[sessionKey(2)] = nil
        table[sessionKey(4)] = Value()
        #expect(table.stats.records == 3 && table.stats.evictions == 0)
        table[sessionKey(5)] = Value()
        #expect(table[sessionKey(1)] == nil, "the oldest live record went")
        table.removeExpired(now: 0)
        #expect(table.stats.records == 3)
        table[sessionKey(6)] = Value(expiresAt: 5)
        table.removeExpired(now: 10)
        #expect(table[sessionKey(6)] == nil && table.stats.records == 2)
    }

    @Test func aMemoryStoreKeepsItsRecordsWithinTheLimits() throws {
        let store = MemorySessionStore(idempotencyLimits: IdempotencyLimits(maxRecords: 1_000, maxAnonymousRecords: 100))
        for i in 0..<3_000 {
            _ = try store.begin(key: anonymousKey(i), fingerprint: "f", inProgressMillis: 30_000)
            try store.complete(
                IdempotencyRecord(
                    key: anonymousKey(i), fingerprint: "f", response: StoredResponse(status: 200, headers: [], body: []),
                    ttlMillis: 60_000))
        }
        let stats = store.idempotencyStats
        #expect(stats.records == 100)
        #expect(stats.evictions == 2_900)
        #expect(try store.begin(key: anonymousKey(2_999), fingerprint: "f", inProgressMillis: 1) != .claimed)
    }

    @Test func storageKeysAreBoundToTheScope() throws {
        let a = SessionID.generate()
        let b = SessionID.generate()
        func request(_ scope: IdempotencyScope, body: String = "x") throws -> IdempotentRequest {
            try IdempotentRequest(key: "K", method: "POST", target: "/t", body: Array(body.utf8), scope: scope)
        }
        #expect(try request(.session(a)).storageKey != request(.session(b)).storageKey)
        #expect(try request(.session(a)).storageKey != request(.anonymous).storageKey)
        #expect(try request(.session(a)).storageKey == request(.session(a), body: "y").storageKey, "a session sees its reuse (422)")
        #expect(try request(.anonymous).storageKey != request(.anonymous, body: "y").storageKey)
        #expect(try IdempotencyScope.isAnonymous(storageKey: request(.anonymous).storageKey))
        #expect(try !request(.session(a)).storageKey.contains(a.rawValue), "the key does not carry the session ID")
        #expect(try !request(.session(a)).logID.contains("K"))
        #expect(throws: IdempotencyRefusal.self) { try IdempotentRequest(key: "", method: "POST", target: "/", body: [], scope: .anonymous) }
    }

    @Test func anonymousRecordsKeepNoCookieAndLargeResponsesOnlyAStandIn() throws {
        let policy = IdempotencyPolicy(maxStoredResponseBytes: 100)
        let response = StoredResponse(
            status: 201, headers: [["Set-Cookie", "sid=secret"], ["Content-Type", "text/plain"]], body: Array("ok".utf8))
        let anonymous = try IdempotentRequest(key: "K", method: "POST", target: "/", body: [], scope: .anonymous)
        let record = anonymous.record(for: response, policy: policy)
        #expect(record.response.headers == [["Content-Type", "text/plain"]])
        #expect(record.ttlMillis == policy.anonymousRecordTTLMillis)
        let scoped = try IdempotentRequest(key: "K", method: "POST", target: "/", body: [], scope: .session(.generate()))
        #expect(scoped.record(for: response, policy: policy).response == response)
        let big = StoredResponse(status: 200, headers: [], body: [UInt8](repeating: 1, count: 1_000))
        let kept = scoped.record(for: big, policy: policy).response
        #expect(kept.byteCount < 100)
        #expect(kept.omitted?.status == 200 && kept.omitted?.bytes == 1_000)
        #expect(throws: IdempotencyRefusal.self) { try scoped.next(after: .completed(kept), waitedMillis: 0, policy: policy) }
    }

    @Test func aKeyValueEntryIsNeverServedAsASession() throws {
        let store = MemorySessionStore()
        let id = SessionID.generate()
        _ = try store.apply(
            SessionDelta(
                id: id, changes: [.set(SessionSnapshot.keyValueEntryMarker, Array("true".utf8)), .set("value", Array("1".utf8))],
                createIfMissing: true))
        let session = Session(store: store, snapshot: try store.load(id))
        #expect(session.id == nil)
        #expect(try session.get("value", as: Int.self) == nil)
    }

    @Test func signingKeysRotateAndShortOnesAreRefused() throws {
        let old = Array("the old signing key, 32 bytes...".utf8)
        let new = Array("the new signing key, 32 bytes...".utf8)
        let id = SessionID.generate()
        let before = try SessionCookieCodec(signingKeys: [old])
        let during = try SessionCookieCodec(signingKeys: [new, old])
        let after = try SessionCookieCodec(signingKeys: [new])
        #expect(during.verifiedID(before.value(for: id)) == id, "old cookies stay valid while the old key is listed")
        #expect(during.value(for: id) == after.value(for: id), "the first key signs")
        #expect(after.verifiedID(before.value(for: id)) == nil, "and stop once it is dropped")
        #expect(throws: SigningKeyError.self) { try SessionCookieCodec(signingKeys: [Array("short".utf8)]) }
        #expect(throws: SigningKeyError.self) { try SessionCookieCodec(signingKeys: [new, Array("15 bytes.......".utf8)]) }
    }

    @Test func secretsComeFromTheEnvironmentOrAFile() throws {
        let name = "SC_TEST_SECRET_\(UInt32.random(in: 0...UInt32.max))"
        #expect(try SecretFromEnvironment.secrets(name) == nil)
        setenv(name, "one secret", 1)
        #expect(try SecretFromEnvironment.secrets(name) == [Array("one secret".utf8)])
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(name).txt")
        try "current\nprevious\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        setenv(name + "_FILE", file.path, 1)
        #expect(throws: SecretError.self) { try SecretFromEnvironment.secrets(name) }  // both set
        unsetenv(name)
        #expect(try SecretFromEnvironment.secrets(name) == [Array("current".utf8), Array("previous".utf8)])
        setenv(name + "_FILE", file.path + ".missing", 1)
        #expect(throws: SecretError.self) { try SecretFromEnvironment.secrets(name) }
        unsetenv(name + "_FILE")
    }
}
