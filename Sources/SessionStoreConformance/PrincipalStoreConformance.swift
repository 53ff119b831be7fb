import SessionCore
import Synchronization
import Testing

/// Makes principal-indexed stores for `PrincipalStoreConformance`.
public protocol PrincipalStoreHarness: Sendable {
    /// A new, empty store with this expiry and cap on sessions per principal.
    func makeStore(expiry: SessionExpiry, principalLimit: PrincipalSessionLimit?) throws -> any PrincipalIndexedStore
    /// Lets `millis` pass for the store.
    func advance(millis: Int64)
    /// Runs the store's expiry sweep once (what its sweeper does on a timer).
    func sweep(_ store: any PrincipalIndexedStore) throws
}

/// The behaviour every `PrincipalIndexedStore` must have: logins and logouts
/// keep the index, listings show only live sessions, the per-principal limit
/// holds under concurrent logins. Run like `SessionStoreConformance`.
public enum PrincipalStoreConformance: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case loginMovesTheSessionAndListsIt
    case logoutKeepsTheSessionButUnlistsIt
    case reloginCountsTheSessionOnce
    case invalidateUnlists
    case regenerateKeepsItListedUnderTheNewID
    case expiredSessionsLeaveTheListing
    case aHandleOnlyFindsItsPrincipalsSessions
    case invalidateOthersKeepsTheCaller
    case limitEvictsTheLeastRecentlyUsed
    case limitRefusesAndChangesNothing
    case concurrentLoginsLeaveExactlyTheLimit
    case aDeltaCannotSetThePrincipal
    case aRevokedSessionIsNotRevivedByAWriteInFlight
    case eventsReportEachChangeOnce

    public var testDescription: String { rawValue }

    /// Runs this check against stores from `harness`.
    public func run(_ harness: some PrincipalStoreHarness) throws {
        let expiry = SessionExpiry(idleTimeoutMillis: 1500, absoluteTimeoutMillis: nil)
        let alice = "alice-\(SessionID.generate().rawValue.prefix(8))"
        let bob = "bob-\(SessionID.generate().rawValue.prefix(8))"
        switch self {
        case .loginMovesTheSessionAndListsIt:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let old = try newSession(store, ["cart": "[1,2]"])
            let id = try logIn(store, old, as: alice, client: "curl/8.5")
            #expect(try store.load(old) == nil, "the pre-login ID must stop working")
            let snapshot = try #require(try store.load(id))
            #expect(snapshot.attributes["cart"] == json("[1,2]"), "a login keeps the session's attributes")
            #expect(snapshot.attributes[SessionPrincipal.attribute].flatMap(decodeJSONString) == alice)
            let listed = try store.sessions(ofPrincipal: alice)
            #expect(listed.map(\.id) == [id])
            #expect(listed.first?.client == "curl/8.5")
            #expect(listed.first.map { $0.lastAccessedAtMillis >= $0.createdAtMillis } == true)
            #expect(try store.sessions(ofPrincipal: bob).isEmpty)
            // A client with no session yet: the login makes one.
            let fresh = try logIn(store, nil, as: alice)
            #expect(Set(try store.sessions(ofPrincipal: alice).map(\.id)) == [id, fresh])

        case .logoutKeepsTheSessionButUnlistsIt:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let id = try logIn(store, try newSession(store, ["cart": "[3]"]), as: alice, client: "phone")
            let out = SessionID.generate(slotTag: id.slotTag)
            _ = try store.changePrincipal(PrincipalChange(id: id, newID: out, principal: nil))
            #expect(try store.sessions(ofPrincipal: alice).isEmpty)
            let snapshot = try #require(try store.load(out))
            #expect(snapshot.attributes == ["cart": json("[3]")], "logout clears the principal and client, nothing else")
            #expect(try store.load(id) == nil)

        case .reloginCountsTheSessionOnce:
            let store = try harness.makeStore(expiry: expiry, principalLimit: PrincipalSessionLimit(maxSessions: 1, whenExceeded: .refuseNewLogin))
            let first = try logIn(store, nil, as: alice)
            let again = try logIn(store, first, as: alice)
            #expect(try store.sessions(ofPrincipal: alice).map(\.id) == [again])

        case .invalidateUnlists:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let a = try logIn(store, nil, as: alice)
            let b = try logIn(store, nil, as: alice)
            try store.invalidate(a)
            #expect(try store.sessions(ofPrincipal: alice).map(\.id) == [b])

        case .regenerateKeepsItListedUnderTheNewID:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let id = try logIn(store, nil, as: alice)
            let next = SessionID.generate(slotTag: id.slotTag)
            #expect(try store.regenerate(id, to: next))
            #expect(try store.sessions(ofPrincipal: alice).map(\.id) == [next])

        case .expiredSessionsLeaveTheListing:
            let store = try harness.makeStore(expiry: expiry, principalLimit: PrincipalSessionLimit(maxSessions: 2, whenExceeded: .refuseNewLogin))
            _ = try logIn(store, nil, as: alice)
            _ = try logIn(store, nil, as: alice)
            harness.advance(millis: expiry.idleTimeoutMillis + 300)
            #expect(try store.sessions(ofPrincipal: alice).isEmpty)
            // Expired sessions do not count against the limit either.
            _ = try logIn(store, nil, as: alice)
            _ = try logIn(store, nil, as: alice)
            #expect(try store.sessions(ofPrincipal: alice).count == 2)

        case .aHandleOnlyFindsItsPrincipalsSessions:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let mine = try logIn(store, nil, as: alice)
            let theirs = try logIn(store, nil, as: bob)
            #expect(try store.invalidate(SessionHandle(of: theirs), ofPrincipal: alice) == false)
            #expect(try store.load(theirs) != nil, "alice must not end bob's session by its handle")
            #expect(try store.invalidate(SessionHandle(of: mine), ofPrincipal: alice))
            #expect(try store.load(mine) == nil)
            #expect(try store.sessions(ofPrincipal: alice).isEmpty)

        case .invalidateOthersKeepsTheCaller:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let ids = try (0..<3).map { _ in try logIn(store, nil, as: alice) }
            let other = try logIn(store, nil, as: bob)
            #expect(try store.invalidateSessions(ofPrincipal: alice, except: ids[1]) == 2)
            #expect(try store.sessions(ofPrincipal: alice).map(\.id) == [ids[1]])
            #expect(try store.load(ids[0]) == nil)
            #expect(try store.load(ids[2]) == nil)
            #expect(try store.load(other) != nil)

        case .limitEvictsTheLeastRecentlyUsed:
            let store = try harness.makeStore(expiry: expiry, principalLimit: PrincipalSessionLimit(maxSessions: 2))
            let first = try logIn(store, nil, as: alice)
            harness.advance(millis: 200)
            let second = try logIn(store, nil, as: alice)
            harness.advance(millis: 200)
            _ = try store.apply(SessionDelta(id: first, changes: [.increment("n", by: 1)]))  // first is now the more recent
            harness.advance(millis: 200)
            let third = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: alice))
            let result = try store.changePrincipal(PrincipalChange(id: nil, newID: third, principal: alice))
            #expect(result.evicted == [second])
            #expect(Set(try store.sessions(ofPrincipal: alice).map(\.id)) == [first, third])
            #expect(try store.load(second) == nil)

        case .limitRefusesAndChangesNothing:
            let store = try harness.makeStore(expiry: expiry, principalLimit: PrincipalSessionLimit(maxSessions: 2, whenExceeded: .refuseNewLogin))
            let held = [try logIn(store, nil, as: alice), try logIn(store, nil, as: alice)]
            let anonymous = try newSession(store, ["cart": "[9]"])
            let newID = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: alice))
            let error = #expect(throws: SessionStoreError.self) {
                _ = try store.changePrincipal(PrincipalChange(id: anonymous, newID: newID, principal: alice))
            }
            #expect(error?.code == .principalLimitReached)
            #expect(Set(try store.sessions(ofPrincipal: alice).map(\.id)) == Set(held))
            #expect(try store.load(anonymous)?.attributes == ["cart": json("[9]")], "the refused session stays as it was")
            #expect(try store.load(newID) == nil)

        case .concurrentLoginsLeaveExactlyTheLimit:
            let store = try harness.makeStore(expiry: SessionExpiry(idleTimeoutMillis: 60_000, absoluteTimeoutMillis: nil), principalLimit: PrincipalSessionLimit(maxSessions: 3))
            let evictions = Mutex(0)
            let failures = try SessionStoreConformance.concurrently(8, { _ in nil }) { _ in
                let result = try store.changePrincipal(
                    PrincipalChange(id: nil, newID: SessionID.generate(slotTag: SessionPrincipal.slotTag(of: alice)), principal: alice))
                evictions.withLock { $0 += result.evicted.count }
                return nil
            }
            #expect(failures.isEmpty, "\(failures)")
            let left = try store.sessions(ofPrincipal: alice)
            #expect(left.count == 3)
            #expect(evictions.withLock { $0 } == 5)
            for entry in left { #expect(try store.load(entry.id) != nil) }

        case .aDeltaCannotSetThePrincipal:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let id = try newSession(store, ["a": "1"])
            let error = #expect(throws: SessionStoreError.self) {
                _ = try store.apply(SessionDelta(id: id, changes: [.set(SessionPrincipal.attribute, json("\"\(alice)\""))]))
            }
            #expect(error?.code == .invalidValue)
            #expect(try store.sessions(ofPrincipal: alice).isEmpty)
            #expect(try store.load(id)?.attributes == ["a": json("1")])

        case .aRevokedSessionIsNotRevivedByAWriteInFlight:
            let store = try harness.makeStore(expiry: expiry, principalLimit: nil)
            let keep = try logIn(store, nil, as: alice)
            let revoked = try logIn(store, nil, as: alice)
            #expect(try store.invalidateSessions(ofPrincipal: alice, except: keep) == 1)
            // A request of the revoked session that loaded it before the revoke now writes.
            #expect(try store.apply(SessionDelta(id: revoked, changes: [.increment("n", by: 1)])) == nil)
            #expect(try store.load(revoked) == nil)
            #expect(try store.sessions(ofPrincipal: alice).map(\.id) == [keep])

        case .eventsReportEachChangeOnce:
            let store = try harness.makeStore(expiry: expiry, principalLimit: PrincipalSessionLimit(maxSessions: 1))
            let source = try #require(store as? any SessionEventSource, "the store must deliver session events")
            let heard = Heard()
            source.events.current = heard
            func kinds(_ events: [SessionEvent]) -> [SessionEvent.Kind] { events.map(\.kind) }
            let anonymous = try newSession(store, ["a": "1"])
            #expect(kinds(heard.take()) == [.created])
            let moved = SessionID.generate(slotTag: anonymous.slotTag)
            #expect(try store.regenerate(anonymous, to: moved))
            let regenerated = heard.take()
            #expect(kinds(regenerated) == [.regenerated])
            #expect(regenerated.first?.handle == SessionHandle(of: moved))
            #expect(regenerated.first?.previous == SessionHandle(of: anonymous))
            let first = try logIn(store, moved, as: alice)
            let loggedIn = heard.take()
            #expect(kinds(loggedIn) == [.principalSet])
            #expect(loggedIn.first?.handle == SessionHandle(of: first) && loggedIn.first?.previous == SessionHandle(of: moved))
            #expect(loggedIn.first?.principal == alice)
            let second = try logIn(store, nil, as: alice)  // the limit is 1: first goes
            let evicting = heard.take()
            #expect(kinds(evicting).sorted { $0.rawValue < $1.rawValue } == [.evicted, .principalSet])
            #expect(evicting.first { $0.kind == .evicted }?.handle == SessionHandle(of: first))
            let out = SessionID.generate(slotTag: second.slotTag)
            _ = try store.changePrincipal(PrincipalChange(id: second, newID: out, principal: nil))
            #expect(kinds(heard.take()) == [.principalCleared])
            try store.invalidate(out)
            #expect(kinds(heard.take()) == [.invalidated])
            try store.invalidate(out)  // gone already: nothing to report
            #expect(heard.take().isEmpty)
            // Expiry: a logged-in session is reported once, by the sweep or a read that finds it expired.
            let expiring = try logIn(store, nil, as: bob)
            _ = heard.take()
            harness.advance(millis: expiry.idleTimeoutMillis + 300)
            try harness.sweep(store)
            #expect(try store.load(expiring) == nil)
            try harness.sweep(store)
            let expired = heard.take()
            #expect(kinds(expired) == [.expired], "\(expired)")
            #expect(expired.first?.handle == SessionHandle(of: expiring) && expired.first?.principal == bob)
        }
    }

    /// The events a store delivers, in order.
    private final class Heard: SessionEventListener {
        let events = Mutex<[SessionEvent]>([])
        func sessionEvent(_ event: SessionEvent) { events.withLock { $0.append(event) } }
        func take() -> [SessionEvent] { events.withLock { e in defer { e = [] }; return e } }
    }

    /// Logs `id` (nil: no session yet) in as `principal`; returns the new ID.
    private func logIn(_ store: any PrincipalIndexedStore, _ id: SessionID?, as principal: String, client: String? = nil) throws -> SessionID {
        let newID = SessionID.generate(slotTag: SessionPrincipal.slotTag(of: principal))
        _ = try store.changePrincipal(PrincipalChange(id: id, newID: newID, principal: principal, client: client))
        return newID
    }

    private func newSession(_ store: any SessionStore, _ attributes: [String: String]) throws -> SessionID {
        let id = SessionID.generate()
        _ = try #require(try store.apply(SessionDelta(id: id, changes: attributes.map { .set($0.key, json($0.value)) }, createIfMissing: true)))
        return id
    }

    private func json(_ text: String) -> [UInt8] { Array(text.utf8) }
}
