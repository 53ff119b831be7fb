#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// The lame-duck period of a graceful stop.
///
/// Closing a kept-alive connection is racy: the balancer may be writing a request
/// on it at that very moment, and then cannot know whether the request was read.
/// So a draining server first keeps serving, answering every request with
/// `Connection: close` (the connection then closes after the response, which
/// the client expects), while whoever routes traffic to it notices (its health
/// endpoint should fail meanwhile) and stops sending; only then does `shutdown()`
/// close what is left.
extension HTTPServer {
    /// From now on every response carries `Connection: close` and its connection closes
    /// after it; new connections are still accepted and served.
    public func beginDraining() {
        if !draining.exchange(true, ordering: .relaxed) { logger.info("draining: answering with Connection: close") }
    }

    /// True after `beginDraining()`.
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Client connections open now.
    public var openConnectionCount: Int { openConnections.load(ordering: .relaxed) }

    /// A graceful stop with a lame-duck period: `beginDraining()`, then waits until no
    /// connection has been open for `quietMillis` (every client, such as a balancer that
    /// took this server out and closed its pooled connections, has gone) or until
    /// `delayMillis` have passed, then `shutdown()`. Returns when stopped.
    public func drainAndShutdown(delayMillis: Int, quietMillis: Int = 100) {
        beginDraining()
        let deadline = monotonicMillis() + Int64(max(0, delayMillis))
        var quietSince: Int64? = nil
        while true {
            let now = monotonicMillis()
            guard now < deadline else { break }
            if openConnectionCount == 0 {
                quietSince = quietSince ?? now
                if now - quietSince! >= Int64(quietMillis) { break }
            } else {
                quietSince = nil
            }
            usleep(10_000)
        }
        logger.info(
            "drained", metadata: ["open_connections": "\(openConnectionCount)", "delay_ms": "\(delayMillis)"])
        shutdown()
    }
}
