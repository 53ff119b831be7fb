import Foundation
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import Synchronization
import TestSupport
import Testing

/// Exclusive mode for async bodies: a `SessionRequestLock`'s lease is held
/// while the async body runs, without holding a thread.
@Suite struct ExclusiveAccessTests {
    /// An in-process lock that refuses at once when held (busy).
    final class TestLock: SessionRequestLock {
        private let held = Mutex<Set<SessionID>>([])
        let grants = Atomic<Int>(0)

        func acquire(_ id: SessionID) throws -> SessionLockLease {
            let acquired = held.withLock { $0.insert(id).inserted }
            guard acquired else { throw SessionBusyError(waitedMillis: 0) }
            grants.add(1, ordering: .relaxed)
            return SessionLockLease(sessionID: id) { [self] in _ = held.withLock { $0.remove(id) } }
        }

        func isHeld(_ id: SessionID) -> Bool { held.withLock { $0.contains(id) } }
    }

    @Test func theLockIsHeldAcrossTheAsyncBodyAndReleasedAfter() async throws {
        let lock = TestLock()
        let access = ExclusiveAccess(lock: lock, lockThreads: 2)
        let id = SessionID.generate()
        let value = try await access.run(id) { () async throws -> Int in
            try await Task.sleep(for: .milliseconds(20))  // suspends: the lease stays held, no thread with it
            #expect(lock.isHeld(id))
            return 42
        }
        #expect(value == 42)
        #expect(!lock.isHeld(id), "released before run returns")
        try await access.shutdown()
    }

    @Test func heldLeasesTakeNoThread() async throws {
        // One lock thread, eight sessions held at once: with a thread parked per
        // held session (the old design) the second acquire would wait for the
        // first body to end, which waits for all eight to be held: a deadlock.
        let lock = TestLock()
        let access = ExclusiveAccess(lock: lock, lockThreads: 1)
        let ids = (0..<8).map { _ in SessionID.generate() }
        let inside = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for id in ids {
                group.addTask {
                    try await access.run(id) {
                        inside.increment()
                        for _ in 0..<500 where inside.current < ids.count {
                            try await Task.sleep(for: .milliseconds(10))
                        }
                        #expect(inside.current == ids.count, "all eight held at once")
                        #expect(lock.isHeld(id))
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(inside.current == ids.count)
        #expect(ids.allSatisfy { !lock.isHeld($0) })
        try await access.shutdown()
    }

    /// A lock whose acquire blocks (polls) until the session is free, for up to `waitMillis`.
    final class WaitingLock: SessionRequestLock {
        let held = Mutex<Set<SessionID>>([])
        let waiting = Atomic<Int>(0)
        let waitMillis: Int
        init(waitMillis: Int) { self.waitMillis = waitMillis }

        func acquire(_ id: SessionID) throws -> SessionLockLease {
            waiting.add(1, ordering: .relaxed)
            defer { waiting.subtract(1, ordering: .relaxed) }
            for _ in 0..<waitMillis {
                if held.withLock({ $0.insert(id).inserted }) {
                    return SessionLockLease(sessionID: id) { [self] in _ = held.withLock { $0.remove(id) } }
                }
                usleep(1000)
            }
            throw SessionBusyError(waitedMillis: waitMillis)
        }
    }

    @Test func aReleaseDoesNotQueueBehindRequestsWaitingForIt() async throws {
        // Two lock threads, both taken by requests waiting for the session that a
        // third holds: its release must still run, else both wait the full 3 s and get 503.
        let lock = WaitingLock(waitMillis: 3_000)
        let access = ExclusiveAccess(lock: lock, lockThreads: 2)
        let id = SessionID.generate()
        final class Outcomes: Sendable { let busy = Atomic<Int>(0), ran = Atomic<Int>(0) }
        let outcomes = Outcomes()
        var waiters: [Task<Void, Never>] = []
        try await access.run(id) {
            for _ in 0..<2 {
                waiters.append(
                    Task {
                        do {
                            _ = try await access.run(id) { outcomes.ran.add(1, ordering: .relaxed) }
                        } catch {
                            outcomes.busy.add(1, ordering: .relaxed)
                        }
                    })
            }
            for _ in 0..<1_000 where lock.waiting.load(ordering: .relaxed) < 2 {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(lock.waiting.load(ordering: .relaxed) == 2, "both waiters block a lock thread")
        }  // released here, while both waiters still block their threads
        for waiter in waiters { await waiter.value }
        #expect(outcomes.busy.load(ordering: .relaxed) == 0)
        #expect(outcomes.ran.load(ordering: .relaxed) == 2)
        try await access.shutdown()
    }

    @Test func aBusySessionIsAnswered503AndBodyErrorsPassThrough() async throws {
        let lock = TestLock()
        let access = ExclusiveAccess(lock: lock, lockThreads: 2)
        let id = SessionID.generate()
        try await access.run(id) {
            do {
                try await access.run(id) { _ = Issue.record("a second holder ran") }
                Issue.record("no busy error")
            } catch let answer as SessionErrorAnswer {
                #expect(answer.status == 503)
                #expect(answer.code == "session_busy")
                #expect(answer.headers.contains { $0.name == "Retry-After" && $0.value == "1" })
            }
        }
        struct Oops: Error {}
        await #expect(throws: Oops.self) { try await access.run(id) { throw Oops() } }
        #expect(!lock.isHeld(id))
        #expect(lock.grants.load(ordering: .relaxed) == 2)
        try await access.shutdown()
    }
}

/// `Idempotency-Key` handling as the core's middleware does it.
@Suite struct IdempotencyGateTests {
    /// The cookie lookup of a request carrying session `id` (nil: no cookie).
    static func cookies(_ id: SessionID?) -> (String) -> String? {
        { name in name == "sid" ? id?.rawValue : nil }
    }

    @Test func claimRecordReplayAndMisuse() async throws {
        try await withExecutor { executor in
            let gate = AsyncIdempotencyGate(
                store: MemorySessionStore(), sessions: SessionConfiguration(), executor: executor, logger: quietLogger())
            let mine = Self.cookies(SessionID.generate())
            guard case .run(nil) = try await gate.begin(key: nil, method: "POST", target: "/x", body: [], cookie: mine)
            else {
                Issue.record("a request without a key runs as it is")
                return
            }
            guard case .run(nil) = try await gate.begin(key: "k", method: "GET", target: "/x", body: [], cookie: mine)
            else {
                Issue.record("GET runs as it is")
                return
            }
            guard case .run(let ticket?) = try await gate.begin(
                key: "k", method: "POST", target: "/x", body: [1], cookie: mine)
            else {
                Issue.record("the first request claims the key")
                return
            }
            await gate.finish(ticket, response: StoredResponse(status: 201, headers: [["X-A", "1"]], body: [7]))
            guard case .replay(let stored) = try await gate.begin(
                key: "k", method: "POST", target: "/x", body: [1], cookie: mine)
            else {
                Issue.record("a retry is replayed")
                return
            }
            #expect(stored.status == 201 && stored.body == [7])
            #expect(stored.headers.contains(["Idempotent-Replayed", "true"]))
            do {
                _ = try await gate.begin(key: "k", method: "POST", target: "/x", body: [2], cookie: mine)
                Issue.record("the same session reusing a key for another body gets 422")
            } catch let answer as SessionErrorAnswer {
                #expect(answer.status == 422)
            }
            // Another session's same key is its own: it runs.
            guard case .run(let other?) = try await gate.begin(
                key: "k", method: "POST", target: "/x", body: [2], cookie: Self.cookies(SessionID.generate()))
            else {
                Issue.record("another session's same key runs its own request")
                return
            }
            await gate.abandon(other)
            do {
                _ = try await gate.begin(key: "bad key", method: "POST", target: "/x", body: [], cookie: mine)
                Issue.record("a key with a space is refused")
            } catch let answer as SessionErrorAnswer {
                #expect(answer.status == 400)
            }
        }
    }

    @Test func anonymousRecordsKeepNoCookieAndAreBoundToTheBody() async throws {
        try await withExecutor { executor in
            let gate = AsyncIdempotencyGate(
                store: MemorySessionStore(), sessions: SessionConfiguration(), executor: executor, logger: quietLogger())
            let none = Self.cookies(nil)
            guard case .run(let ticket?) = try await gate.begin(
                key: "k", method: "POST", target: "/login", body: [1], cookie: none)
            else {
                Issue.record("the first request claims the key")
                return
            }
            #expect(ticket.request.scope == .anonymous)
            await gate.finish(
                ticket, response: StoredResponse(status: 200, headers: [["Set-Cookie", "sid=secret"]], body: [7]))
            guard case .replay(let stored) = try await gate.begin(
                key: "k", method: "POST", target: "/login", body: [1], cookie: none)
            else {
                Issue.record("a cookieless retry is replayed")
                return
            }
            #expect(stored.body == [7])
            #expect(!stored.headers.contains { $0.first?.lowercased() == "set-cookie" }, "no cookie for another client")
            // Another body under the same key is another record, not a 422.
            guard case .run(let other?) = try await gate.begin(
                key: "k", method: "POST", target: "/login", body: [2], cookie: none)
            else {
                Issue.record("an anonymous key with another body runs")
                return
            }
            await gate.abandon(other)
        }
    }
}
