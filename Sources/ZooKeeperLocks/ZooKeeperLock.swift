import ClusterLocks
import CZooKeeper
import Logging
import Synchronization
import SystemSupport

/// A lock in ZooKeeper, the recipe of its documentation (and Curator's
/// `InterProcessMutex`):
///
/// - Each acquisition creates an ephemeral sequential node under the
///   lock's own container node, `<root>/<name>/lock-<holder tag>-NNNNNNNNNN`;
///   the lowest sequence number holds the lock. The tag finds a node whose
///   creation's answer was lost with the connection, and a given-up node
///   that could not be deleted then is deleted at the next call: the session
///   outlives a lost connection, and so would the node, blocking the lock.
/// - A waiter watches only the node just before its own: a release wakes
///   one waiter, never the herd.
/// - The fencing token is the node's creation zxid (`czxid`): zxids grow
///   across the whole ensemble, leader elections included, so tokens of a
///   name grow with every grant.
/// - There is no lease per lock: the lock lives as long as its holder's
///   session, which the client library keeps alive while the process runs.
///   A holder silent for longer than the session timeout (stopped,
///   partitioned) loses its session, its nodes and its locks; it finds
///   them `lost` when it comes back. The ensemble's clock decides.
/// - `extend` checks that the node still exists; the session renews itself.
///
/// Lock names are escaped into one znode name each (`/` and other bytes
/// outside letters, digits, `-`, `.` and `_` as `%XX`).
public final class ZooKeeperLock: LockService {
    public var kind: String { "zookeeper" }
    /// The parent of every lock's container node: `/cluster_locks` by default.
    public let root: String
    public let configuration: ZooKeeperConfiguration
    let logger: Logger
    /// The current session: replaced when the ensemble ends it.
    private let session = Mutex<ZooKeeperSession?>(nil)
    /// Each holder's node.
    private let held = Mutex<[String: (directory: String, tag: String, path: String, session: ZooKeeperSession)]>([:])
    /// Nodes of given-up acquisitions that could not be deleted then (the connection was lost):
    /// their session lives on after it reconnects, and they would block the lock. Deleted at the
    /// next call.
    private let orphans = Mutex<[(directory: String, tag: String)]>([])
    /// When the last connect failed (monotonic ms), 0 after a success.
    private let lastConnectFailure = Atomic<Int64>(0)

    /// - Parameter namespace: the root node's name (letters, digits, `_`, `-`).
    public init(configuration: ZooKeeperConfiguration, namespace: String = "cluster_locks", logger: Logger) {
        precondition(
            !namespace.isEmpty && namespace.utf8.allSatisfy(Self.isPlain), "the namespace must be a plain znode name")
        self.configuration = configuration
        root = "/" + namespace
        self.logger = logger
    }

    public func acquire(_ name: String, holder: String, leaseMillis: Int, waitMillis: Int) throws -> LockGrant? {
        try unavailableOnFailure {
            try acquireNode(name, holder: holder, deadline: monotonicMillis() + Int64(waitMillis))
        }
    }

    private func acquireNode(_ name: String, holder: String, deadline: Int64) throws -> LockGrant? {
        let current = try currentSession()
        deleteOrphans(on: current)
        let directory = root + "/" + Self.escaped(name)
        // The node's name carries a tag of its holder, so that a creation whose answer was lost
        // (the connection dropped) can still be found and deleted.
        let tag = Self.escaped(String(holder.prefix(12)))
        do {
            let path = try createNode(in: directory, tag: tag, on: current)
            let mine = String(path.dropFirst(directory.count + 1))
            while true {
                let waiting = try current.children(directory).filter { $0.hasPrefix("lock-") }.sorted {
                    $0.suffix(10) < $1.suffix(10)  // by the sequence number ZooKeeper appended
                }
                guard let place = waiting.firstIndex(of: mine) else {
                    throw LockError(.lost, "the lock's node vanished while waiting: the session ended")
                }
                if place == 0 {
                    guard let stat = try current.stat(path) else { throw LockError(.lost, "the lock's node vanished") }
                    held.withLock { $0[holder] = (directory, tag, path, current) }
                    return LockGrant(fencingToken: stat.czxid, expiresAt: nil)
                }
                let left = deadline - monotonicMillis()
                if left <= 0 {
                    giveUp(directory: directory, tag: tag, on: current)
                    return nil
                }
                _ = try current.awaitDeletion(of: directory + "/" + waiting[place - 1], timeoutMillis: Int(left))
            }
        } catch {
            giveUp(directory: directory, tag: tag, on: current)
            throw error
        }
    }

    /// Deletes the node of an acquisition given up (a timeout, a failure), or leaves it to
    /// `deleteOrphans` when that fails too.
    private func giveUp(directory: String, tag: String, on current: ZooKeeperSession) {
        if (try? retryingWhileDisconnected({ try deleteTagged(directory: directory, tag: tag, on: current) })) == nil {
            orphans.withLock { $0.append((directory, tag)) }
        }
    }

    private func deleteTagged(directory: String, tag: String, on current: ZooKeeperSession) throws {
        for child in try current.children(directory) where child.hasPrefix("lock-\(tag)-") {
            _ = try current.delete(directory + "/" + child)
        }
    }

    /// Deletes the nodes of acquisitions given up while the connection was lost.
    private func deleteOrphans(on current: ZooKeeperSession) {
        let pending = orphans.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for orphan in pending where (try? deleteTagged(directory: orphan.directory, tag: orphan.tag, on: current)) == nil {
            if !current.hasEnded { orphans.withLock { $0.append(orphan) } }  // an ended session took them along
        }
    }

    public func release(_ name: String, holder: String) throws -> Bool {
        guard let node = held.withLock({ $0.removeValue(forKey: holder) }) else { return false }
        return try unavailableOnFailure {
            var attempts = 0
            do {
                let deleted = try retryingWhileDisconnected {
                    attempts += 1
                    return try node.session.delete(node.path)
                }
                // Gone at a retry, its session alive: the attempt whose answer the lost connection took
                // deleted it.
                if !deleted && attempts > 1 && !node.session.hasEnded { return true }
                if !deleted {
                    logger.warning(
                        "a lock's node was gone at its release", metadata: ["lock": "\(DistributedLock.loggable(name))"])
                }
                return deleted
            } catch let error as ZooKeeperError where error.sessionEnded {
                return false  // its session, and the lock with it, ended: lost
            } catch {
                // Still there, and its session renews itself: deleted at the next call, or it would block
                // the lock for as long as this process lives.
                orphans.withLock { $0.append((node.directory, node.tag)) }
                throw error
            }
        }
    }

    public func extend(_ name: String, holder: String, leaseMillis: Int) throws -> Bool {
        guard let node = held.withLock({ $0[holder] }) else { return false }
        return try unavailableOnFailure {
            do {
                return try node.session.stat(node.path) != nil
            } catch let error as ZooKeeperError where error.sessionEnded {
                return false
            }
        }
    }

    /// The ephemeral sequential node of a new acquisition, under its lock's container node
    /// (made on the way, with the root; the server deletes an empty container by itself, so a
    /// creation that finds its parent gone makes it again).
    private func createNode(in directory: String, tag: String, on current: ZooKeeperSession) throws -> String {
        for _ in 0..<5 {
            do {
                return try current.create(directory + "/lock-\(tag)-", data: "", flags: ZOO_EPHEMERAL_SEQUENTIAL)
            } catch let error as ZooKeeperError where error.code == ZNONODE.rawValue {
                for parent in [root, directory] {
                    do {
                        _ = try current.create(parent, data: "", flags: ZOO_CONTAINER)
                    } catch let error as ZooKeeperError where error.code == ZNODEEXISTS.rawValue {}
                }
            }
        }
        throw ZooKeeperError(code: ZNONODE.rawValue, operation: "create a node under \(directory)")
    }

    /// Runs `body` again while it fails for a lost connection (the client reconnects to another
    /// server by itself; a leader election takes about a second), for up to a session timeout.
    private func retryingWhileDisconnected<T>(_ body: () throws -> T) throws -> T {
        // The session's negotiated timeout may exceed the one asked for; and at least 5 s, a reconnect's time.
        let negotiated = session.withLock { $0?.timeoutMillis } ?? 0
        let deadline = monotonicMillis() + Int64(max(configuration.sessionTimeoutMillis, negotiated, 5_000))
        while true {
            do {
                return try body()
            } catch let error as ZooKeeperError where error.connectionLost && monotonicMillis() < deadline {
                sleepMillis(50)
            }
        }
    }

    /// The session, connecting (again) when there is none or the ensemble ended it.
    /// Connects outside the lock (a connect may wait `connectTimeoutMillis`); after a failed
    /// connect, calls fail at once for a second instead of queueing for a connect each.
    private func currentSession() throws -> ZooKeeperSession {
        let now = monotonicMillis()
        let (current, failedAt) = session.withLock { ($0, lastConnectFailure.load(ordering: .relaxed)) }
        if let current, !current.hasEnded { return current }
        if failedAt != 0 && now - failedAt < 1_000 {
            throw LockError(.unavailable, "ZooKeeper: \(configuration.connect) could not be reached a moment ago")
        }
        let fresh: ZooKeeperSession
        do {
            fresh = try ZooKeeperSession(configuration: configuration)
        } catch {
            lastConnectFailure.store(monotonicMillis(), ordering: .relaxed)
            throw error
        }
        lastConnectFailure.store(0, ordering: .relaxed)
        return session.withLock { session in
            if let session, !session.hasEnded { return session }  // another thread connected first: use its
            session = fresh
            return fresh
        }
    }

    private func unavailableOnFailure<T>(_ body: () throws -> T) throws -> T {
        try LockError.unavailableOnFailure(of: ZooKeeperError.self, service: "ZooKeeper", body)
    }

    private static func isPlain(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_")
            || byte == UInt8(ascii: "-")
    }

    /// One znode name for any lock name.
    static func escaped(_ name: String) -> String {
        var out = ""
        for byte in name.utf8 {
            if isPlain(byte) || byte == UInt8(ascii: ".") && !out.isEmpty {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" : "") + hex
            }
        }
        return out
    }
}
