import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An example node (`hummingbird-node`, `vapor-node`) run as a real process by
/// a test: started with posix_spawn (default signal dispositions, output to a
/// log file) and stopped by its PID. The test that starts one stops it
/// (`kill()`, also from `deinit`).
public final class ExampleNodeProcess: Sendable {
    /// How a process ended.
    public enum Exit: Equatable, Sendable, CustomStringConvertible {
        /// `exit(code)`.
        case exited(Int32)
        /// Ended by a signal.
        case signaled(Int32)

        public var description: String {
            switch self {
            case .exited(let code): "exit code \(code)"
            case .signaled(let signal): "signal \(signal)"
            }
        }
    }

    /// The node's PID.
    public let pid: Int32
    /// Its HTTP port on 127.0.0.1.
    public let port: Int
    /// Where its standard output and error go.
    public let logPath: String
    private let exit = Mutex<Exit?>(nil)

    /// The executable `name` that `swift build` linked into the build directory
    /// of this test bundle (`.build/<triple>/debug`, which `.build/debug` points
    /// to): `swift test` does not link a package's executables, `swift build`
    /// does (Integrations/test.sh runs it before the tests).
    public static func executable(named name: String) throws -> String {
        let candidates = [
            URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath(),
            Bundle.main.executableURL?.resolvingSymlinksInPath(),
            URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath(),
        ].compactMap { $0 }
        for start in candidates {
            var directory = start.deletingLastPathComponent()
            for _ in 0..<4 {
                let path = directory.appendingPathComponent(name).path
                if FileManager.default.isExecutableFile(atPath: path) { return path }
                directory = directory.deletingLastPathComponent()
            }
        }
        throw TestKitError(
            "\(name) not found near \(candidates.first?.path ?? "the test bundle"): run `swift build` before the tests (Integrations/test.sh does)")
    }

    /// Starts `executable` with `arguments` (which make it listen on `port`).
    public init(executable: String, arguments: [String], port: Int) throws {
        self.port = port
        logPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(URL(fileURLWithPath: executable).lastPathComponent)-\(UUID().uuidString).log").path
        pid = try spawn(executable, arguments, outputPath: logPath)
    }

    /// What the node wrote so far (standard output and error).
    public var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Sends `signal` to the node (nothing once it was reaped).
    public func send(_ signal: Int32) {
        exit.withLock { if $0 == nil { signalProcess(pid, signal) } }
    }

    /// How the node ended, once it has (reaps it); nil while it runs.
    public func poll() -> Exit? {
        exit.withLock { exit in
            if exit == nil {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid {
                    // WIFEXITED / WEXITSTATUS / WTERMSIG (macros Swift does not import).
                    exit = status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
                }
            }
            return exit
        }
    }

    /// Waits up to `timeout` seconds for the node to end; nil if it still runs.
    public func waitForExit(timeout: Double) -> Exit? {
        _ = waitUntil(timeout: timeout) { poll() != nil }
        return poll()
    }

    /// Waits until `GET /healthz` answers 200 (true), or the node ended or `timeout` seconds passed (false).
    public func waitUntilHealthy(timeout: Double = 60) -> Bool {
        waitUntil(timeout: timeout) {
            poll() == nil && (try? rawHTTP(port: port, "GET", "/healthz", timeoutSeconds: 2))?.status == 200
        }
    }

    /// SIGKILL unless it ended, then reaps it. Safe to call again.
    public func kill() {
        guard poll() == nil else { return }
        send(SIGKILL)
        _ = waitForExit(timeout: 10)
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

/// `kill(2)` (the class's own `kill()` hides the function's name there).
private func signalProcess(_ pid: Int32, _ signal: Int32) {
    _ = kill(pid, signal)
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
    /// the signal (looked for until `delay − 0.3 s` after it); nil if it did not then.
    public var keptClosedAfterSeconds: Double?
    /// How the node ended (nil: still running after the wait).
    public var exit: ExampleNodeProcess.Exit?
    /// When, in seconds after the signal.
    public var exitSeconds: Double

    /// Waits for the node to be healthy, opens the kept connection, sends SIGTERM,
    /// polls `/healthz` on new connections until it is not 200, sends a request on
    /// the kept connection, watches it for a close, and waits up to `exitTimeout`
    /// seconds for the node to end. Blocking: run it with `onThread`.
    public static func observe(
        _ node: ExampleNodeProcess, drainDelayMillis: Int, exitTimeout: Double = 30
    ) throws -> LameDuckRun {
        guard node.waitUntilHealthy(timeout: 120) else {
            throw TestKitError("the node did not answer /healthz 200 (exit: \(node.poll().map { "\($0)" } ?? "none")): \(node.output)")
        }
        let kept = try RawHTTPConnection(port: node.port, timeoutSeconds: 10)
        defer { kept.close() }
        let keptBefore = try kept.request("GET", "/api/session")
        let signalled = Date()
        node.send(SIGTERM)
        let delay = Double(drainDelayMillis) / 1000
        var health: RawHTTPResponse
        repeat {
            health = try rawHTTP(port: node.port, "GET", "/healthz", timeoutSeconds: 5)
            if health.status != 200 { break }
            usleep(10_000)
        } while Date().timeIntervalSince(signalled) < delay
        let healthSeconds = Date().timeIntervalSince(signalled)
        let keptDuring = try kept.request("GET", "/api/session")
        let watch = max(0, delay - 0.3 - Date().timeIntervalSince(signalled))
        let closed = kept.closedByPeer(within: watch) ? Date().timeIntervalSince(signalled) : nil
        let exit = node.waitForExit(timeout: exitTimeout)
        return LameDuckRun(
            keptBefore: keptBefore, healthAfterSignal: health, healthAfterSignalSeconds: healthSeconds,
            keptDuring: keptDuring, keptClosedAfterSeconds: closed, exit: exit,
            exitSeconds: Date().timeIntervalSince(signalled))
    }
}
