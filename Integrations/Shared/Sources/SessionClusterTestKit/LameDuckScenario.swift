import Testing
import SystemSupport

/// The lame-duck scenario on an example node's real executable, whatever the framework:
/// starts `executable` with an in-memory store and a 1.5 s `--drain-delay-ms`, observes
/// it around SIGTERM as a balancer would (`LameDuckRun.observe`), stops it by its PID, and
/// checks what every adapter promises: kept alive before the signal, `/healthz` 503
/// draining within the delay, the kept connection still served by this node, exit 0 not
/// before the delay. The `Connection` field of the draining answer differs by framework:
/// the caller checks it on the returned run.
public func exerciseLameDuck(executable name: String, nodeID: String) async throws -> LameDuckRun {
    let executable = try ExampleNodeProcess.executable(named: name)
    let port = try Sockets.freeLoopbackPort()
    let node = try ExampleNodeProcess(
        executable: executable,
        arguments: [
            "--host", "127.0.0.1", "--port", "\(port)", "--node-id", nodeID, "--store", "memory",
            "--store-threads", "4", "--drain-delay-ms", "1500",
        ],
        port: port)
    defer { node.kill() }  // SIGKILL by its PID unless it exited
    let run = try await onThread { try LameDuckRun.observe(node, drainDelayMillis: 1500) }

    #expect(run.keptBefore.status == 200)
    #expect(!run.keptBefore.lists("close", in: "Connection"), "kept alive before the signal")
    #expect(run.healthAfterSignal.status == 503, "a new connection is accepted and told draining")
    #expect(run.healthAfterSignal.body == "{\"status\":\"draining\",\"node\":\"\(nodeID)\"}")
    #expect(run.healthAfterSignalSeconds < 1.5, "within the delay")
    #expect(run.keptDuring.status == 200, "the kept connection is still served")
    #expect(run.keptDuring.header("X-Served-By") == nodeID)
    #expect(run.exit == .exited(0), "\(node.output)")
    #expect(run.exitSeconds >= 1.5, "not before the delay ended")
    #expect(run.exitSeconds < 30)
    #expect(node.output.contains("signal received, draining"))
    return run
}
