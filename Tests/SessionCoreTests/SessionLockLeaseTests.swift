import SessionCore
import Synchronization
import Testing

/// The core's lease-based lock contract: `withExclusiveAccess` on top of `acquire`, release once.
@Suite struct SessionLockLeaseTests {
    /// Counts acquisitions and releases; refuses while held.
    final class CountingLock: SessionRequestLock {
        let held = Mutex<Set<SessionID>>([])
        let releases = Atomic<Int>(0)

        func acquire(_ id: SessionID) throws -> SessionLockLease {
            guard held.withLock({ $0.insert(id).inserted }) else { throw SessionBusyError(waitedMillis: 3) }
            return SessionLockLease(sessionID: id) { [self] in
                _ = held.withLock { $0.remove(id) }
                releases.add(1, ordering: .relaxed)
            }
        }
    }

    @Test func aLeaseReleasesOnceHoweverOftenItIsReleased() throws {
        let lock = CountingLock()
        let id = SessionID.generate()
        let lease = try lock.acquire(id)
        #expect(!lease.isReleased)
        #expect(throws: SessionBusyError(waitedMillis: 3)) { _ = try lock.acquire(id) }
        lease.release()
        lease.release()
        #expect(lease.isReleased)
        #expect(lock.releases.load(ordering: .relaxed) == 1)
        let again = try lock.acquire(id)
        lease.release()  // the old lease must not free the new holder
        #expect(lock.held.withLock { $0.contains(id) })
        again.release()
    }

    @Test func aLeaseDroppedWithoutReleaseIsReleased() throws {
        let lock = CountingLock()
        let id = SessionID.generate()
        _ = try lock.acquire(id)  // dropped at once: a caller's bug
        #expect(lock.releases.load(ordering: .relaxed) == 1)
        #expect(!lock.held.withLock { $0.contains(id) })
    }

    @Test func withExclusiveAccessReleasesAfterTheBodyAlsoWhenItThrows() throws {
        let lock = CountingLock()
        let id = SessionID.generate()
        let inside = try lock.withExclusiveAccess(to: id) { lock.held.withLock { $0.contains(id) } }
        #expect(inside)
        struct Failed: Error, Equatable {}
        #expect(throws: Failed()) { try lock.withExclusiveAccess(to: id) { throw Failed() } }
        #expect(lock.releases.load(ordering: .relaxed) == 2)
        #expect(lock.held.withLock { $0.isEmpty })
    }
}
