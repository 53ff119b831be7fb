#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import Synchronization
import SystemSupport

/// One node's place in the cluster: fixed name and ports, and what runs there now.
final class NodeSlot: Sendable {
    enum State: String, Sendable {
        /// Started, not yet answering /healthz.
        case starting
        case running
        /// Frozen by SIGSTOP.
        case stopped
        /// Ended; stays so until restarted.
        case dead
        /// The old process is being stopped before a new one starts.
        case restarting
    }

    struct Current {
        var process: SpawnedProcess?
        var state = State.starting
        var restarts = 0
        var lastExit: String?
        var lastExitPID: pid_t?
        /// The supervisor itself ended this PID (kill, restart): not reported as unexpected.
        var expectedExit: pid_t?
        var sessions: Int?
        /// Why the node answers `/healthz` with 503 while running (rejoining, its store unreachable), if it does.
        var refusing: String?
    }

    let name: String
    let port: Int
    let replicationPort: Int
    private let current = Mutex(Current())

    init(name: String, port: Int, replicationPort: Int) {
        self.name = name
        self.port = port
        self.replicationPort = replicationPort
    }

    var process: SpawnedProcess? { current.withLock { $0.process } }
    var state: State { current.withLock { $0.state } }
    var snapshot: Current { current.withLock { $0 } }

    @discardableResult
    func update<R>(_ body: (inout Current) -> R) -> R { current.withLock { body(&$0) } }
}

/// A free TCP port on 127.0.0.1 (bound and released; the node binds it right after).
func freeLoopbackPort() throws(SupervisorError) -> Int {
    do {
        return try Sockets.freeLoopbackPort()
    } catch {
        throw SupervisorError("cannot find a free port: \(error)")
    }
}
