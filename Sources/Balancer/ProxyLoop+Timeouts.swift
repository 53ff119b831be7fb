#if canImport(Glibc)
import Glibc
#endif
import Logging
import MiniHTTP
import SystemSupport

// Timeouts: each sweep closes or answers what waited too long; request IDs.
extension ProxyLoop {
    // MARK: - Timeouts

    func sweep(now: Int64) {
        for socket in Array(sockets.values) where socket.isOpen {
            if let c = socket as? ClientConnection {
                sweepClient(c, now: now)
            } else if let b = socket as? BackendConnection {
                sweepBackend(b, now: now)
            }
        }
    }

    func sweepClient(_ c: ClientConnection, now: Int64) {
        if c.output.pending > 0 && now - c.lastWrite > Int64(configuration.clientWriteTimeoutMillis) {
            counters.clientTimeouts.add(1, ordering: .relaxed)
            if c.exchange?.machine.responseStarted == true { counters.aborted.add(1, ordering: .relaxed) }
            abortClient(c)
            return
        }
        if let ex = c.exchange {
            if let action = ex.machine.bodyDeadline(now: now, limits: exchangeLimits) {
                counters.clientTimeouts.add(1, ordering: .relaxed)
                logger.info(
                    "request body not received in time",
                    metadata: [
                        "client": "\(c.remoteAddress)", "method": "\(ex.method)",
                        "timeout_ms": "\(configuration.clientBodyTimeoutMillis)",
                    ])
                switch action {
                case .closeClient:
                    counters.aborted.add(1, ordering: .relaxed)
                    abortClient(c)
                case .respond(let answer):
                    respondError(ex, answer)
                }
            }
        } else if c.messageStart != 0 {
            if now - c.messageStart > Int64(configuration.clientHeaderTimeoutMillis) && !c.closeAfterWrite {
                counters.clientTimeouts.add(1, ordering: .relaxed)
                let response = HTTPResponse.error(
                    status: 408, code: "request_timeout", message: "request head not received in time")
                c.output.append(HTTPResponseSerializer.serialize(response, keepAlive: false))
                c.closeAfterWrite = true
                schedule(c)
            }
        } else if c.output.isEmpty
            && now - max(c.lastRead, c.lastWrite) > Int64(configuration.clientIdleTimeoutMillis)
        {
            closeClient(c)
        }
    }

    func sweepBackend(_ b: BackendConnection, now: Int64) {
        switch b.state {
        case .connecting(let deadline):
            if now >= deadline {
                logger.debug(
                    "backend connect timed out", metadata: ["backend": "\(registry.states[b.backend].configuration.name)"])
                backendFailed(b, .connect)
            }
        case .idle(let since):
            // A backend taken out (health checks, drain, ejection) gets its pooled connections back: a
            // draining node waits for them to close, and they would be stale when it returns.
            if now - since > Int64(configuration.poolIdleTimeoutMillis) || !registry.states[b.backend].isAvailable(now: now) {
                closeBackend(b)
            }
        case .active:
            guard let ex = b.exchange else { return }
            let overdue = ex.machine.backendOverdue(
                now: now, lastRead: b.lastRead, lastWrite: b.lastWrite, upstreamPending: ex.upstream.pending > 0,
                clientHasRoom: ex.client.output.pending < highWater, limits: exchangeLimits)
            if overdue { backendFailed(b, .timeout) }
        }
    }

    // MARK: - Helpers

    /// 128 random bits as 32 hex digits.
    func newRequestID() -> String {
        var out = [UInt8]()
        out.reserveCapacity(32)
        for _ in 0..<2 {
            var v = random.next()
            for _ in 0..<16 {
                let d = UInt8(v & 0xF)
                out.append(d < 10 ? 48 + d : 87 + d)
                v >>= 4
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
