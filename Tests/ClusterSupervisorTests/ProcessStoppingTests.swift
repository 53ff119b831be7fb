import SystemSupport
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `waitUntilProcessStopped` (SystemSupport) on a real multithreaded process, a local node: it
/// answers true only once every thread is stopped, and false while any runs.
@Suite(.tags(.integration)) struct ProcessStoppingTests {
    @Test func aFrozenNodeHasEveryThreadStoppedAndAResumedOneDoesNot() throws {
        let (node, port) = try ChildProcess.sessionClusterNode(id: "frozen")
        defer { node.kill() }
        #expect(!waitUntilProcessStopped(node.pid, timeoutMillis: 0), "a running node is not stopped")

        #expect(node.freeze(), "every thread stopped after SIGSTOP")
        // Stopped means it answers nothing: the kernel queues the connection, no thread reads it.
        #expect(throws: (any Error).self, "a frozen node answered") {
            try rawHTTP(port: port, "GET", "/healthz", timeoutMillis: 300)
        }

        #expect(node.send(SIGCONT))
        #expect(waitUntil(timeout: 10) { (try? rawHTTP(port: port, "GET", "/healthz", timeoutMillis: 2_000))?.status == 200 })
        #expect(!waitUntilProcessStopped(node.pid, timeoutMillis: 0), "a resumed node is not stopped")

        node.kill()
        #expect(!waitUntilProcessStopped(node.pid, timeoutMillis: 0), "a process that is gone is not stopped")
        #expect(!node.freeze(timeout: 1), "an ended process cannot be frozen")
    }
}
