import Dispatch
import Foundation
import SessionCore
import Synchronization
import Testing

/// Makes stores for the conformance suite and moves their time forward.
public protocol SessionStoreHarness: Sendable {
    /// A new, empty store with this expiry.
    func makeStore(expiry: SessionExpiry) throws -> any SessionStore
    /// Lets `millis` pass for the store: a manual clock moves, or real time is slept.
    func advance(millis: Int64)
}

/// The behaviour every `SessionStore` must have. Run each case from a
/// parameterized test:
///
/// ```swift
/// @Test(arguments: SessionStoreConformance.allCases)
/// func conformance(_ check: SessionStoreConformance) throws {
///     try check.run(MyHarness())
/// }
/// ```
public enum SessionStoreConformance: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case createThenLoad
    case unknownIDIsNeverAdopted
    case deltasTouchOnlyTheirAttributes
    case concurrentDeltasOnDifferentAttributesKeepBoth
    case incrementCreatesAndCounts
    case incrementOnNonIntegerFailsAtomically
    case concurrentIncrementsAreNeverLost
    case versionGrowsWithEveryDelta
    case idleTimeoutSlides
    case absoluteTimeoutEndsActiveSessions
    case touchIsThrottled
    case regenerateMovesDataAndKillsOldID
    case invalidateDeletes
    case expiredSessionIsNotRevivedByApply
    case valuesRoundTripExactly
    case idempotencyClaimConflictAndReplay
    case idempotencyAbandonLetsARetryRun
    case idempotencyRecordIsWrittenWithTheDelta
    case idempotencyRecordIsNotWrittenWhenTheDeltaFails
    case deltaOfAKeyCompletedElsewhereIsRefused
    case idempotencyRecordsExpire

    public var testDescription: String { rawValue }

    /// Runs this check against stores from `harness`.
    public func run(_ harness: some SessionStoreHarness) throws {
        let expiry = SessionExpiry(idleTimeoutMillis: 1000, absoluteTimeoutMillis: 2500)
        let store = try harness.makeStore(expiry: expiry)
        switch self {
        case .createThenLoad:
            let id = SessionID.generate()
            let applied = try #require(try store.apply(delta(id, [.set("user", json("\"ada\""))], create: true)))
            #expect(applied.created)
            let snapshot = try #require(try store.load(id))
            #expect(snapshot.id == id)
            #expect(snapshot.attributes == ["user": json("\"ada\"")])
            #expect(snapshot.version == applied.version)
            #expect(snapshot.createdAtMillis <= snapshot.lastAccessedAtMillis)

        case .unknownIDIsNeverAdopted:
            let id = SessionID.generate()
            #expect(try store.load(id) == nil)
            #expect(try store.apply(delta(id, [.set("a", json("1"))], create: false)) == nil)
            #expect(try store.load(id) == nil)
            #expect(try store.regenerate(id, to: SessionID.generate(slotTag: id.slotTag)) == false)

        case .deltasTouchOnlyTheirAttributes:
            let id = try newSession(store, ["a": "1", "b": "2"])
            _ = try store.apply(delta(id, [.remove("a"), .set("c", json("3"))]))
            let snapshot = try #require(try store.load(id))
            #expect(snapshot.attributes == ["b": json("2"), "c": json("3")])

        case .concurrentDeltasOnDifferentAttributesKeepBoth:
            let id = try newSession(store, ["base": "0"])
            // Interleaved: two requests load the same version, then each saves a change to its own attribute.
            let firstLoad = try #require(try store.load(id))
            let secondLoad = try #require(try store.load(id))
            #expect(firstLoad.version == secondLoad.version)
            _ = try #require(try store.apply(delta(id, [.set("x", json("1"))])))
            _ = try #require(try store.apply(delta(id, [.set("y", json("2"))])))
            #expect(try store.load(id)?.attributes == ["base": json("0"), "x": json("1"), "y": json("2")])
            // Concurrent: in each round, writers on threads of their own all load the session, then
            // (released together) all save a change to their own attribute at once.
            let writers = 4
            for round in 1...20 {
                let failures = try Self.concurrently(writers) { writer in
                    guard try store.load(id) != nil else { return "load \(writer) found no session" }
                    return nil
                } then: { writer in
                    guard try store.apply(delta(id, [.set("w\(writer)", json("\(round)"))])) != nil else {
                        return "apply \(writer) found no session"
                    }
                    return nil
                }
                #expect(failures.isEmpty, "round \(round): \(failures)")
                var expected = ["base": json("0"), "x": json("1"), "y": json("2")]
                for writer in 0..<writers { expected["w\(writer)"] = json("\(round)") }
                #expect(try store.load(id)?.attributes == expected, "round \(round): every writer's attribute is kept")
            }

        case .incrementCreatesAndCounts:
            let id = SessionID.generate()
            let first = try #require(try store.apply(delta(id, [.increment("n", by: 1)], create: true)))
            #expect(first.counters == ["n": 1])
            let second = try #require(try store.apply(delta(id, [.increment("n", by: 41)])))
            #expect(second.counters == ["n": 42])
            let third = try #require(try store.apply(delta(id, [.increment("n", by: -2)])))
            #expect(third.counters == ["n": 40])
            #expect(try store.load(id)?.attributes["n"] == json("40"))

        case .incrementOnNonIntegerFailsAtomically:
            let id = try newSession(store, ["name": "\"ada\""])
            let before = try #require(try store.load(id))
            #expect(throws: SessionStoreError.self) {
                _ = try store.apply(delta(id, [.set("other", json("1")), .increment("name", by: 1)]))
            }
            let after = try #require(try store.load(id))
            #expect(after.attributes == before.attributes)
            #expect(after.version == before.version)

        case .concurrentIncrementsAreNeverLost:
            let id = try newSession(store, [:])
            let failures = Mutex(0)
            DispatchQueue.concurrentPerform(iterations: 8) { _ in
                for _ in 0..<1000 {
                    do {
                        if try store.apply(delta(id, [.increment("hits", by: 1)])) == nil {
                            failures.withLock { $0 += 1 }
                        }
                    } catch {
                        failures.withLock { $0 += 1 }
                    }
                }
            }
            #expect(failures.withLock { $0 } == 0)
            #expect(try store.load(id)?.attributes["hits"] == json("8000"))

        case .versionGrowsWithEveryDelta:
            let id = try newSession(store, [:])
            var last = try #require(try store.load(id)).version
            for i in 0..<5 {
                let applied = try #require(try store.apply(delta(id, [.set("i", json("\(i)"))])))
                #expect(applied.version > last)
                last = applied.version
            }

        case .idleTimeoutSlides:
            let id = try newSession(store, ["a": "1"])
            harness.advance(millis: 600)
            #expect(try store.load(id) != nil, "alive before the idle timeout")
            harness.advance(millis: 600)
            #expect(try store.load(id) != nil, "the read at 600 ms slid the idle timer")
            harness.advance(millis: 1100)
            #expect(try store.load(id) == nil, "idle for longer than the timeout")

        case .absoluteTimeoutEndsActiveSessions:
            let id = try newSession(store, ["a": "1"])
            for _ in 0..<3 {
                harness.advance(millis: 600)
                _ = try store.apply(delta(id, [.increment("n", by: 1)]))
            }
            #expect(try store.load(id) != nil, "1.8 s old, active: alive")
            harness.advance(millis: 800)
            #expect(try store.load(id) == nil, "2.6 s old: past the absolute timeout")

        case .touchIsThrottled:
            // Its own store, idle 10 s: the touch interval (idle/10) is 1 s. On a manual clock the
            // steps below are exact; a store on real time (Redis keeps its own clock) has about
            // 970 ms for the early load, over 50 times what a load takes on a loaded machine.
            let throttled = try harness.makeStore(expiry: SessionExpiry(idleTimeoutMillis: 10_000, absoluteTimeoutMillis: nil))
            let id = try newSession(throttled, [:])
            let created = try #require(try throttled.load(id))
            harness.advance(millis: 30)
            let early = try #require(try throttled.load(id))
            #expect(early.lastAccessedAtMillis == created.lastAccessedAtMillis, "no touch within idle/10")
            harness.advance(millis: 1_100)
            _ = try #require(try throttled.load(id))
            let later = try #require(try throttled.load(id))
            #expect(later.lastAccessedAtMillis > created.lastAccessedAtMillis, "touched after idle/10")

        case .regenerateMovesDataAndKillsOldID:
            let old = try newSession(store, ["user": "\"ada\""])
            let new = SessionID.generate(slotTag: old.slotTag)
            #expect(try store.regenerate(old, to: new))
            #expect(try store.load(old) == nil)
            #expect(try store.load(new)?.attributes == ["user": json("\"ada\"")])
            #expect(try store.apply(delta(old, [.set("x", json("1"))])) == nil)

        case .invalidateDeletes:
            let id = try newSession(store, ["a": "1"])
            try store.invalidate(id)
            #expect(try store.load(id) == nil)
            #expect(try store.apply(delta(id, [.set("a", json("2"))])) == nil)
            try store.invalidate(id)  // idempotent

        case .expiredSessionIsNotRevivedByApply:
            let id = try newSession(store, ["a": "1"])
            harness.advance(millis: 1100)
            #expect(try store.apply(delta(id, [.set("b", json("2"))])) == nil)
            #expect(try store.load(id) == nil)

        case .valuesRoundTripExactly:
            let values: [String: [UInt8]] = [
                "unicode": json("\"zoë 🚀 \\u0000\""),
                "object": json("{\"a\":[1,2,{\"b\":null}],\"c\":true}"),
                "big": json("\"" + String(repeating: "x", count: 8000) + "\""),
                "weird name: with spaces / and {braces}": json("0"),
            ]
            let id = SessionID.generate()
            _ = try store.apply(delta(id, values.map { .set($0.key, $0.value) }, create: true))
            #expect(try store.load(id)?.attributes == values)

        case .idempotencyClaimConflictAndReplay:
            let records = try idempotent(store)
            let key = "k-\(SessionID.generate().rawValue)"
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .claimed)
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .inProgress)
            #expect(try records.begin(key: key, fingerprint: "other", inProgressMillis: 10_000) == .mismatch)
            try records.complete(record(key))
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .completed(record(key).response))
            #expect(try records.begin(key: key, fingerprint: "other", inProgressMillis: 10_000) == .mismatch)

        case .idempotencyAbandonLetsARetryRun:
            let records = try idempotent(store)
            let key = "k-\(SessionID.generate().rawValue)"
            #expect(try records.begin(key: key, fingerprint: "fp", inProgressMillis: 10_000) == .claimed)
            try records.abandon(key: key)
            #expect(try records.begin(key: key, fingerprint: "fp", inProgressMillis: 10_000) == .claimed)
            // A completed record is never abandoned.
            try records.complete(IdempotencyRecord(key: key, fingerprint: "fp", response: record(key).response, ttlMillis: 60_000))
            try records.abandon(key: key)
            #expect(try records.begin(key: key, fingerprint: "fp", inProgressMillis: 10_000) == .completed(record(key).response))

        case .idempotencyRecordIsWrittenWithTheDelta:
            let records = try idempotent(store)
            let id = try newSession(store, [:])
            let key = try storageKey(.session(id))
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .claimed)
            var d = delta(id, [.increment("n", by: 1)])
            d.idempotencyRecord = record(key)
            #expect(try store.apply(d)?.counters == ["n": 1])
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .completed(record(key).response))
            // ...also when the delta creates the session (an ID with the record's slot tag, as `Session` makes it).
            let key2 = try storageKey(.anonymous)
            var d2 = delta(SessionID.generate(slotTag: IdempotencyScope.slotTag(ofStorageKey: key2)), [.set("a", json("1"))], create: true)
            d2.idempotencyRecord = record(key2)
            _ = try store.apply(d2)
            #expect(try records.begin(key: key2, fingerprint: "fp-\(key2)", inProgressMillis: 10_000) == .completed(record(key2).response))

        case .idempotencyRecordIsNotWrittenWhenTheDeltaFails:
            let records = try idempotent(store)
            let id = try newSession(store, ["name": "\"ada\""])
            let key = try storageKey(.session(id))
            var d = delta(id, [.increment("name", by: 1)])
            d.idempotencyRecord = record(key)
            #expect(throws: SessionStoreError.self) { _ = try store.apply(d) }
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .claimed)
            // ...nor when the session is gone.
            let goneID = SessionID.generate()
            let key2 = try storageKey(.session(goneID))
            var gone = delta(goneID, [.set("a", json("1"))])
            gone.idempotencyRecord = record(key2)
            #expect(try store.apply(gone) == nil)
            #expect(try records.begin(key: key2, fingerprint: "fp-\(key2)", inProgressMillis: 10_000) == .claimed)

        case .deltaOfAKeyCompletedElsewhereIsRefused:
            // A retry took over the claim and completed first: the first run's changes must not apply.
            let records = try idempotent(store)
            let id = try newSession(store, [:])
            let key = try storageKey(.session(id))
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .claimed)
            var retry = delta(id, [.increment("n", by: 1)])
            retry.idempotencyRecord = record(key)
            #expect(try store.apply(retry)?.counters == ["n": 1])
            var first = delta(id, [.increment("n", by: 1), .set("late", json("1"))])
            first.idempotencyRecord = record(key, status: 200)
            let refused = #expect(throws: SessionStoreError.self) { _ = try store.apply(first) }
            #expect(refused?.code == .idempotencyKeyCompleted)
            let after = try store.load(id)
            #expect(after?.attributes["n"] == json("1"))
            #expect(after?.attributes["late"] == nil)
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .completed(record(key).response))
            // Nor does a late record without a delta replace the first outcome.
            try records.complete(record(key, status: 500))
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 10_000) == .completed(record(key).response))

        case .idempotencyRecordsExpire:
            let records = try idempotent(store)
            let key = "k-\(SessionID.generate().rawValue)"
            try records.complete(record(key, ttl: 500))
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 300) != .claimed)
            harness.advance(millis: 600)
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 300) == .claimed)
            harness.advance(millis: 400)
            #expect(try records.begin(key: key, fingerprint: "fp-\(key)", inProgressMillis: 300) == .claimed, "in-progress claims expire too")
        }
    }

    /// A storage key as `IdempotentRequest` makes it for `scope` (a new random client key).
    private func storageKey(_ scope: IdempotencyScope) throws -> String {
        try IdempotentRequest(
            key: "k-\(SessionID.generate().rawValue)", method: "POST", target: "/", body: [], scope: scope
        ).storageKey
    }

    private func idempotent(_ store: any SessionStore) throws -> any IdempotencyStore {
        try #require(store as? any IdempotencyStore, "the store must also be an IdempotencyStore")
    }

    private func record(_ key: String, status: Int = 201, ttl: Int64 = 60_000) -> IdempotencyRecord {
        IdempotencyRecord(
            key: key, fingerprint: "fp-\(key)",
            response: StoredResponse(status: status, headers: [["Content-Type", "application/json"]], body: json("{\"ok\":1}")),
            ttlMillis: ttl)
    }

    private func json(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// Runs `first(i)` for i in 0..<count on `count` threads of their own; once every thread has
    /// run it, releases them together to run `then(i)`. Returns the failures the steps reported
    /// (a message, or an error thrown), or a setup failure when the threads did not come.
    static func concurrently(
        _ count: Int, _ first: @escaping @Sendable (Int) throws -> String?,
        then: @escaping @Sendable (Int) throws -> String?
    ) throws -> [String] {
        let failures = Failures()
        let loaded = DispatchGroup()
        let done = DispatchGroup()
        let go = DispatchSemaphore(value: 0)
        for index in 0..<count {
            loaded.enter()
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                do {
                    if let failure = try first(index) { failures.add(failure) }
                } catch {
                    failures.add("\(error)")
                }
                loaded.leave()
                go.wait()
                do {
                    if let failure = try then(index) { failures.add(failure) }
                } catch {
                    failures.add("\(error)")
                }
            }
        }
        // Generous: each step is one store call; the bound only stops a hung store from hanging the suite.
        let allLoaded = loaded.wait(timeout: .now() + 60) == .success
        for _ in 0..<count { go.signal() }
        try #require(allLoaded, "the writer threads did not all load within 60 s")
        try #require(done.wait(timeout: .now() + 60) == .success, "the writer threads did not all save within 60 s")
        return failures.all
    }

    private func delta(_ id: SessionID, _ changes: [SessionChange], create: Bool = false) -> SessionDelta {
        SessionDelta(id: id, changes: changes, createIfMissing: create)
    }

    private func newSession(_ store: any SessionStore, _ attributes: [String: String]) throws -> SessionID {
        let id = SessionID.generate()
        let changes = attributes.map { SessionChange.set($0.key, json($0.value)) }
        _ = try #require(try store.apply(delta(id, changes, create: true)))
        return id
    }
}

/// Failures reported from several threads.
private final class Failures: Sendable {
    private let messages = Mutex<[String]>([])
    func add(_ message: String) { messages.withLock { $0.append(message) } }
    var all: [String] { messages.withLock { $0 } }
}
