#if canImport(Glibc)
import Glibc
#endif
import Logging
import MiniHTTP
import SystemSupport

// Backend connections (each backend's idle pool, connects, releases) and client connections' ends.
extension ProxyLoop {
    // MARK: - Backend connections and the pool

    /// A pooled connection to `backend` that is still open, if any. A pooled connection
    /// that spoke or closed is closed by its event (see `backendEvent`), but a close can
    /// still be in flight: a request that may be retried finds out on first use (a failure
    /// on a reused connection is retried), one that may not (`probe`) is protected by a
    /// non-blocking peek, one syscall, first.
    func takeIdle(_ backend: Int, probe: Bool) -> BackendConnection? {
        while let b = idle[backend].popLast() {
            b.state = .active  // out of the pool
            if probe {
                var byte: UInt8 = 0
                let n = recv(b.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                guard n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) else {
                    closeBackend(b)  // closed, reset, or unexpected bytes: not usable
                    continue
                }
            }
            b.reused = true
            b.readable = false
            return b
        }
        return nil
    }

    /// Starts a non-blocking connect; nil when it failed at once.
    func connect(_ backend: Int, now: Int64) -> BackendConnection? {
        let state = registry.states[backend]
        let address = state.address
        let fd = socket(
            address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            logger.error("socket() failed", metadata: ["errno": "\(errno)"])
            return nil
        }
        Sockets.setNoDelay(fd)
        let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        let connState: BackendConnection.State
        if rc == 0 {
            connState = .active
        } else if errno == EINPROGRESS {
            connState = .connecting(deadline: now + Int64(configuration.backendConnectTimeoutMillis))
        } else {
            logger.debug("backend connect failed", metadata: ["backend": "\(state.configuration.name)", "errno": "\(errno)"])
            close(fd)
            return nil
        }
        let b = BackendConnection(
            fd: fd, id: nextID, backend: backend, state: connState, maxHeadBytes: configuration.maxResponseHeadBytes,
            now: now)
        nextID += 1
        guard poller.add(fd, Self.socketEvents, token: b.token) else {
            close(fd)
            return nil
        }
        sockets[fd] = b
        state.connectionsOpened.add(1, ordering: .relaxed)
        if rc == 0 { registry.connectSucceeded(backend) }
        return b
    }

    /// Keeps a backend connection for the next request.
    func release(_ b: BackendConnection) {
        // A hang-up seen while the response was read ends the connection here: with
        // edge-triggered events no second event would tell the pool.
        guard idle[b.backend].count < configuration.maxIdlePerBackend, b.registered, !b.hangup else {
            closeBackend(b)
            return
        }
        b.state = .idle(since: monotonicMillis())
        b.reused = true
        b.parser.reset()
        idle[b.backend].append(b)
    }

    func closeBackend(_ b: BackendConnection) {
        guard b.isOpen else { return }
        if b.isIdle, let i = idle[b.backend].firstIndex(where: { $0 === b }) {
            idle[b.backend].remove(at: i)
        }
        detach(b)
        b.isOpen = false
        if sockets[b.fd] === b { sockets[b.fd] = nil }
        if b.registered { poller.remove(b.fd) }
        close(b.fd)
    }

    // MARK: - Client connections

    /// Closes the client connection at once (and its exchange's backend connection).
    func abortClient(_ c: ClientConnection) {
        closeClient(c)
    }

    func closeClient(_ c: ClientConnection) {
        guard c.isOpen else { return }
        if let b = c.exchange?.backend {
            closeBackend(b)
        }
        if let ex = c.exchange { dequeue(ex) }
        c.exchange = nil
        c.isOpen = false
        if sockets[c.fd] === c { sockets[c.fd] = nil }
        poller.remove(c.fd)
        close(c.fd)
        clientCount -= 1
        balancer.openClients.subtract(1, ordering: .relaxed)
        balancer.spreader.released(by: index)
    }
}
