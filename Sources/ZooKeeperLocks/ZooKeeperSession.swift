import CZooKeeper
import Dispatch
import Logging
import Synchronization

/// Where a ZooKeeper lock service is, and its session's limits.
public struct ZooKeeperConfiguration: Sendable {
    /// The ensemble: `host:port,host:port,…`.
    public var connect: String
    /// The session timeout asked for: how long a client may be silent (stopped, partitioned)
    /// before the ensemble ends its session and its locks. The servers clamp it to their limits.
    public var sessionTimeoutMillis: Int
    /// Longest wait for a session to be established.
    public var connectTimeoutMillis: Int

    public init(connect: String, sessionTimeoutMillis: Int = 3_000, connectTimeoutMillis: Int = 3_000) {
        precondition(sessionTimeoutMillis > 0 && connectTimeoutMillis > 0, "bad ZooKeeper timeouts")
        self.connect = connect
        self.sessionTimeoutMillis = sessionTimeoutMillis
        self.connectTimeoutMillis = connectTimeoutMillis
    }
}

/// Where the C client's log lines go (at debug level).
private let zooKeeperClientLog = Logger(label: "zookeeper-client")

/// A ZooKeeper call failed with `code` (a `ZOO_ERRORS` value).
struct ZooKeeperError: Error, CustomStringConvertible {
    var code: Int32
    var operation: String
    var description: String { "\(operation): \(String(cString: zerror(code)))" }
    /// The session is gone (expired, or its handle closed): its ephemeral nodes, and locks, with it.
    var sessionEnded: Bool { code == ZSESSIONEXPIRED.rawValue || code == ZINVALIDSTATE.rawValue }
    /// The connection to the current server was lost (the session may live on, on another server).
    var connectionLost: Bool { code == ZCONNECTIONLOSS.rawValue || code == ZOPERATIONTIMEOUT.rawValue }
}

/// One ZooKeeper session (a `zhandle_t` of the multithreaded C client:
/// its calls may come from any thread; its watchers run on the library's
/// completion thread).
final class ZooKeeperSession: @unchecked Sendable {  // handle: set once; the C client locks its own state
    private let handle: OpaquePointer
    private let watch: SessionWatch

    /// The session's state as its watcher last saw it.
    private final class SessionWatch: Sendable {
        let connected = DispatchSemaphore(value: 0)
        let ended = Atomic<Bool>(false)
    }

    /// Connects; throws when no session is established within the configured time.
    init(configuration: ZooKeeperConfiguration) throws {
        zoo_set_debug_level(ZOO_LOG_LEVEL_WARN)
        let watch = SessionWatch()
        let context = Unmanaged.passRetained(watch).toOpaque()
        let watcher: watcher_fn = { _, type, state, _, context in
            guard type == ZOO_SESSION_EVENT, let context else { return }
            let watch = Unmanaged<SessionWatch>.fromOpaque(context).takeUnretainedValue()
            if state == ZOO_CONNECTED_STATE {
                watch.connected.signal()
            } else if state == ZOO_EXPIRED_SESSION_STATE || state == ZOO_AUTH_FAILED_STATE {
                watch.ended.store(true, ordering: .sequentiallyConsistent)
            }
        }
        // The client's own log lines (a server refusing, a connection lost: the errors callers get
        // anyway) go to swift-log at debug, not to stderr.
        let log: log_callback_fn = { message in
            guard let message else { return }
            zooKeeperClientLog.debug("\(String(cString: message))")
        }
        guard
            let made = zookeeper_init2(
                configuration.connect, watcher, Int32(configuration.sessionTimeoutMillis), nil, context, 0, log)
        else {
            Unmanaged<SessionWatch>.fromOpaque(context).release()
            throw ZooKeeperError(code: ZSYSTEMERROR.rawValue, operation: "zookeeper_init \(configuration.connect)")
        }
        // The watcher (and its context) may run until zookeeper_close: the context is kept for the
        // process's life, a few bytes per session.
        guard watch.connected.wait(timeout: .now() + .milliseconds(configuration.connectTimeoutMillis)) == .success else {
            zookeeper_close(made)
            throw ZooKeeperError(code: ZCONNECTIONLOSS.rawValue, operation: "connect to \(configuration.connect)")
        }
        handle = made
        self.watch = watch
    }

    deinit { zookeeper_close(handle) }

    /// Whether the ensemble ended this session (its ephemeral nodes are gone).
    var hasEnded: Bool { watch.ended.load(ordering: .sequentiallyConsistent) || zoo_state(handle) == ZOO_EXPIRED_SESSION_STATE }

    /// The session's negotiated timeout.
    var timeoutMillis: Int { Int(zoo_recv_timeout(handle)) }

    /// Creates `path` with `data`; returns the created path (with its sequence number for a sequential node).
    func create(_ path: String, data: String, flags: Int32) throws -> String {
        var created = [CChar](repeating: 0, count: 1024)
        let bytes = Array(data.utf8)
        let code = bytes.withUnsafeBufferPointer { value in
            value.withMemoryRebound(to: CChar.self) { value in
                zoo_create(handle, path, value.baseAddress, Int32(value.count), czookeeper_open_acl(), flags, &created, 1024)
            }
        }
        guard code == ZOK.rawValue else { throw ZooKeeperError(code: code, operation: "create \(path)") }
        let end = created.firstIndex(of: 0) ?? created.count
        return String(decoding: created[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The names of `path`'s children.
    func children(_ path: String) throws -> [String] {
        var list = String_vector(count: 0, data: nil)
        let code = zoo_get_children(handle, path, 0, &list)
        guard code == ZOK.rawValue else { throw ZooKeeperError(code: code, operation: "children of \(path)") }
        defer { deallocate_String_vector(&list) }
        return (0..<Int(list.count)).map { String(cString: list.data[$0]!) }
    }

    /// `path`'s stat, or nil when it does not exist.
    func stat(_ path: String) throws -> Stat? {
        var stat = Stat()
        let code = zoo_exists(handle, path, 0, &stat)
        if code == ZNONODE.rawValue { return nil }
        guard code == ZOK.rawValue else { throw ZooKeeperError(code: code, operation: "exists \(path)") }
        return stat
    }

    /// Deletes `path`: false when it did not exist.
    func delete(_ path: String) throws -> Bool {
        let code = zoo_delete(handle, path, -1)
        if code == ZNONODE.rawValue { return false }
        guard code == ZOK.rawValue else { throw ZooKeeperError(code: code, operation: "delete \(path)") }
        return true
    }

    /// Waits up to `timeoutMillis` for `path` to be deleted (a watch on it alone: no herd).
    /// True when it is gone, false on timeout.
    func awaitDeletion(of path: String, timeoutMillis: Int) throws -> Bool {
        let gone = DispatchSemaphore(value: 0)
        let context = Unmanaged.passRetained(gone).toOpaque()
        let watcher: watcher_fn = { _, type, _, _, context in
            guard let context else { return }
            let semaphore = Unmanaged<DispatchSemaphore>.fromOpaque(context)
            if type == ZOO_SESSION_EVENT {
                // The connection's state changed: the watch stays (the client sets it again on the next
                // server) and may fire later; wake the waiter, which looks again, but keep the context.
                semaphore.takeUnretainedValue().signal()
            } else {
                // A node event ends the one-shot watch: its context goes with it.
                semaphore.takeRetainedValue().signal()
            }
        }
        var stat = Stat()
        // The context is released by the watch's node event only: the client registers the watch
        // even when the node is already gone (a watch for its creation), and delivers session events
        // to it until then. A watch whose node event never comes (the node gone already, the session
        // ended) keeps its context: a few bytes.
        let code = zoo_wexists(handle, path, watcher, context, &stat)
        if code == ZNONODE.rawValue { return true }
        guard code == ZOK.rawValue else { throw ZooKeeperError(code: code, operation: "watch \(path)") }
        return gone.wait(timeout: .now() + .milliseconds(max(0, timeoutMillis))) == .success
    }
}
