import Foundation
import SystemSupport
import TestSupport
import Testing

/// The lame-duck scenario on an example node's real executable, whatever the framework:
/// starts `executable` (as `swift build` linked it: Integrations/test.sh runs it before the
/// tests) with an in-memory store and an 8 s `--drain-delay-ms`, observes it around
/// SIGTERM as a balancer would (`LameDuckRun.observe`), stops it by its PID, and checks
/// what every adapter promises: kept alive before the signal, `/healthz` 503 draining
/// within the delay, the kept connection still served by this node, exit 0 not before
/// the delay. The `Connection` field of the draining answer differs by framework: the
/// caller checks it on the returned run.
///
/// The delay is long so that nothing here depends on how fast a loaded machine is:
/// each step after the signal takes milliseconds, and the checks that must happen
/// within the delay have 8 s for it; the one bound on time that is checked, "not
/// before the delay ended", is a lower bound the node itself keeps.
public func exerciseLameDuck(executable name: String, nodeID: String) async throws -> LameDuckRun {
    let drainDelayMillis = 8_000
    let executable = try ChildProcess.builtExecutable(named: name)
    let port = try Sockets.freeLoopbackPort()
    let node = try ChildProcess(
        executable,
        [
            "--host", "127.0.0.1", "--port", "\(port)", "--node-id", nodeID, "--store", "memory",
            "--store-threads", "4", "--drain-delay-ms", "\(drainDelayMillis)",
        ])
    defer { node.kill() }  // SIGKILL by its PID unless it exited
    let run = try await onThread { try LameDuckRun.observe(node, port: port, drainDelayMillis: drainDelayMillis) }
    let delay = Double(drainDelayMillis) / 1000

    #expect(run.keptBefore.status == 200)
    #expect(!run.keptBefore.lists("close", in: "Connection"), "kept alive before the signal")
    #expect(run.healthAfterSignal.status == 503, "a new connection is accepted and told draining")
    #expect(run.healthAfterSignal.bodyText == "{\"status\":\"draining\",\"node\":\"\(nodeID)\"}")
    #expect(run.healthAfterSignalSeconds < delay, "within the delay")
    #expect(run.keptDuring.status == 200, "the kept connection is still served")
    #expect(run.keptDuring.header("X-Served-By") == nodeID)
    #expect(run.exit == .exited(0), "\(node.output)")
    #expect(run.exitSeconds >= delay, "not before the delay ended")
    #expect(node.output.contains("signal received, draining"))
    return run
}

/// What an example node did around SIGTERM with `--drain-delay-ms` (its lame
/// duck), seen by a client as a balancer sees it: one kept-alive connection
/// opened before the signal, and new connections for health checks.
public struct LameDuckRun: Sendable {
    /// `GET /api/session` on the kept connection before the signal.
    public var keptBefore: RawHTTPResponse
    /// The first `GET /healthz` on a new connection after the signal that did not answer 200.
    public var healthAfterSignal: RawHTTPResponse
    /// When it came, in seconds after the signal.
    public var healthAfterSignalSeconds: Double
    /// `GET /api/session` on the kept connection once `/healthz` said draining.
    public var keptDuring: RawHTTPResponse
    /// When the server closed the kept connection after that answer, in seconds after
    /// the signal (looked for until `delay − 1 s` after it); nil if it did not then.
    public var keptClosedAfterSeconds: Double?
    /// How the node ended (nil: still running after the wait).
    public var exit: ChildExit?
    /// When, in seconds after the signal.
    public var exitSeconds: Double

    /// Waits for the node (listening on `port`) to be healthy, opens the kept connection,
    /// sends SIGTERM, polls `/healthz` on new connections until it is not 200, sends a
    /// request on the kept connection, watches it for a close, and waits up to
    /// `exitTimeout` seconds for the node to end. Blocking: run it with `onThread`.
    public static func observe(
        _ node: ChildProcess, port: Int, drainDelayMillis: Int, exitTimeout: Double = 60
    ) throws -> LameDuckRun {
        let healthy = waitUntil(timeout: 120) {
            !node.isRunning || (try? rawHTTP(port: port, "GET", "/healthz", timeoutMillis: 2_000))?.status == 200
        }
        guard healthy && node.isRunning else {
            throw TestError("the node did not answer /healthz 200 (exit: \(node.exit.map { "\($0)" } ?? "none")): \(node.output)")
        }
        let kept = try RawHTTPConnection(port: port)
        defer { kept.close() }
        let keptBefore = try kept.request("GET", "/api/session", timeoutMillis: 10_000)
        let signalled = Date()
        node.send(SIGTERM)
        let delay = Double(drainDelayMillis) / 1000
        var health: RawHTTPResponse
        repeat {
            health = try rawHTTP(port: port, "GET", "/healthz", timeoutMillis: 5_000)
            if health.status != 200 { break }
            usleep(10_000)
        } while Date().timeIntervalSince(signalled) < delay
        let healthSeconds = Date().timeIntervalSince(signalled)
        let keptDuring = try kept.request("GET", "/api/session", timeoutMillis: 10_000)
        let watchMillis = Int(max(0, delay - 1 - Date().timeIntervalSince(signalled)) * 1000)
        let closed = kept.waitForClose(timeoutMillis: watchMillis) ? Date().timeIntervalSince(signalled) : nil
        let exit = node.waitForExit(timeout: exitTimeout)
        return LameDuckRun(
            keptBefore: keptBefore, healthAfterSignal: health, healthAfterSignalSeconds: healthSeconds,
            keptDuring: keptDuring, keptClosedAfterSeconds: closed, exit: exit,
            exitSeconds: Date().timeIntervalSince(signalled))
    }
}
