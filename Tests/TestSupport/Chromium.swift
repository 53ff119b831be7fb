import Foundation

/// Headless Chromium driven over the DevTools protocol, for browser tests.
///
/// The protocol runs over `--remote-debugging-pipe`: Chromium reads commands
/// from its fd 3 and writes replies and events to its fd 4, each message JSON
/// ended by a NUL byte. The two channels are Unix socket pairs rather than
/// pipes so that a write to a Chromium that died fails with EPIPE instead of
/// killing the test process with SIGPIPE (`send` with `MSG_NOSIGNAL`).
///
/// Chromium runs in its own process group; `close()` stops it by its PID
/// (Browser.close, then SIGKILL after a timeout), reaps it, kills helpers left
/// in its group, and removes its temporary profile.
public final class Chromium: @unchecked Sendable {  // used by one test at a time
    /// The browser process, leader of its own process group.
    private let process: ChildProcess
    /// The browser's PID, also its process group.
    public var pid: pid_t { process.pid }
    /// Holds the profile (`profile/`) and Chromium's output (`chromium.log`).
    public let workDirectory: URL
    private let commandFD: Int32  // we send, Chromium reads as fd 3
    private let messageFD: Int32  // Chromium writes as fd 4, we read
    private var buffer: [UInt8] = []
    private var lastID = 0
    private var closed = false

    /// Where Chromium is installed, if it is.
    public static func installedExecutable() -> String? {
        var candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            candidates += ["\(dir)/chromium", "\(dir)/chromium-browser"]
        }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Chromium's path, installing the apt package `chromium` when it is
    /// missing (with sudo when not root, like scripts/ensure-packages.sh);
    /// the error says why it is not available. Tried once per process.
    public static func ensureInstalled() -> Result<String, TestError> { installation }

    private static let installation: Result<String, TestError> = {
        if let path = installedExecutable() { return .success(path) }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/apt-get") else {
            return .failure(TestError("chromium is not installed, and apt-get is not available to install it"))
        }
        var prefix: [String] = []
        if geteuid() != 0 {
            guard FileManager.default.isExecutableFile(atPath: "/usr/bin/sudo") else {
                return .failure(TestError(
                    "chromium is not installed; installing it needs root and sudo is missing (apt-get install chromium)"))
            }
            prefix = ["/usr/bin/sudo", "-n"]  // never wait for a password
        }
        let apt = prefix + ["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "/usr/bin/apt-get", "-q", "-o", "DPkg::Lock::Timeout=120"]
        print("==> chromium is missing; installing the apt package chromium")
        for step in [["update"], ["install", "-y", "--no-install-recommends", "chromium"]] {
            let (status, output) = runQuietly(apt + step)
            guard status == 0 else {
                let tail = output.split(separator: "\n").suffix(15).joined(separator: "\n")
                return .failure(TestError(
                    "chromium is not installed and `apt-get \(step[0])` failed (status \(status)):\n\(tail)"))
            }
        }
        guard let path = installedExecutable() else {
            return .failure(TestError("apt-get installed chromium, but no chromium binary was found"))
        }
        return .success(path)
    }()

    /// Runs a command to its end; its status and its output (stdout and stderr).
    private static func runQuietly(_ command: [String]) -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("apt-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(at: log) }
        guard FileManager.default.createFile(atPath: log.path, contents: nil),
            let handle = try? FileHandle(forWritingTo: log)
        else { return (-1, "cannot create \(log.path)") }
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { return (-1, "\(error)") }
        process.waitUntilExit()
        try? handle.close()
        return (process.terminationStatus, (try? String(contentsOf: log, encoding: .utf8)) ?? "")
    }

    /// Starts headless Chromium on about:blank with a new temporary profile.
    public init(executable: String, windowSize: (width: Int, height: Int) = (1280, 900)) throws {
        workDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("chromium-\(UUID().uuidString)")
        let profile = workDirectory.appendingPathComponent("profile")
        try FileManager.default.createDirectory(at: profile, withIntermediateDirectories: true)

        var commands: [Int32] = [-1, -1]
        var messages: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &commands) == 0,
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &messages) == 0
        else {
            let error = errno
            for fd in commands + messages where fd >= 0 { Glibc.close(fd) }
            try? FileManager.default.removeItem(at: workDirectory)
            throw TestError("socketpair failed: errno \(error)")
        }
        defer {
            Glibc.close(commands[1])
            Glibc.close(messages[1])
        }

        let arguments = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            "--user-data-dir=\(profile.path)", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
            "--window-size=\(windowSize.width),\(windowSize.height)", "about:blank",
        ]
        // Its own process group (to find its helpers); Chromium's ends of the channels as its fds 3 and 4.
        do {
            process = try ChildProcess(
                URL(fileURLWithPath: executable), arguments,
                logFile: workDirectory.appendingPathComponent("chromium.log"), ownProcessGroup: true,
                descriptors: [3: commands[1], 4: messages[1]])
        } catch {
            Glibc.close(commands[0])
            Glibc.close(messages[0])
            try? FileManager.default.removeItem(at: workDirectory)
            throw error
        }
        commandFD = commands[0]
        messageFD = messages[0]
    }

    deinit { close() }

    /// What Chromium wrote on stdout and stderr so far.
    public var log: String {
        (try? String(contentsOf: workDirectory.appendingPathComponent("chromium.log"), encoding: .utf8)) ?? ""
    }

    // MARK: The protocol

    /// Sends one command and waits up to `timeout` seconds for its reply,
    /// skipping events and other replies; returns its `result`.
    @discardableResult
    public func send(
        _ method: String, _ params: [String: Any] = [:], sessionID: String? = nil, timeout: Double = 15
    ) throws -> [String: Any] {
        guard !closed else { throw ChromiumError("\(method): the browser is closed") }
        lastID += 1
        let id = lastID
        var message: [String: Any] = ["id": id, "method": method, "params": params]
        if let sessionID { message["sessionId"] = sessionID }
        var bytes = [UInt8](try JSONSerialization.data(withJSONObject: message))
        bytes.append(0)
        try write(bytes, method: method)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let reply = try nextMessage(before: deadline, method: method)
            guard (reply["id"] as? Int) == id else { continue }  // an event, or a late reply
            if let error = reply["error"] as? [String: Any] {
                throw ChromiumError("\(method) failed: \(error["message"] ?? error) \(error["data"] ?? "")")
            }
            return reply["result"] as? [String: Any] ?? [:]
        }
    }

    private func write(_ bytes: [UInt8], method: String) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(commandFD, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ChromiumError("\(method): cannot write to chromium (errno \(errno))\(logTail)") }
            offset += n
        }
    }

    /// The next whole message, reading as needed until `deadline`.
    private func nextMessage(before deadline: Date, method: String) throws -> [String: Any] {
        while true {
            if let end = buffer.firstIndex(of: 0) {
                let data = Data(buffer[..<end])
                buffer.removeSubrange(...end)
                guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { continue }
                return object
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw ChromiumError("\(method): no reply within the timeout\(logTail)") }
            var poller = pollfd(fd: messageFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(min(remaining * 1000, 1000)) + 1)
            if ready < 0 && errno != EINTR { throw ChromiumError("\(method): poll failed (errno \(errno))") }
            guard ready > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let n = chunk.withUnsafeMutableBytes { recv(messageFD, $0.baseAddress!, $0.count, 0) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard n > 0 else { throw ChromiumError("\(method): chromium closed the DevTools pipe\(logTail)") }
            buffer += chunk[..<n]
        }
    }

    private var logTail: String {
        let tail = log.split(separator: "\n").suffix(10).joined(separator: "\n")
        return tail.isEmpty ? "" : "; chromium's last output:\n\(tail)"
    }

    // MARK: Pages

    /// Opens `url` in a new tab, attaches to it, and waits until it has loaded.
    public func open(_ url: String, loadTimeout: Double = 15) throws -> ChromiumPage {
        let target = try send("Target.createTarget", ["url": url])
        guard let targetID = target["targetId"] as? String else { throw ChromiumError("Target.createTarget: no targetId") }
        let attached = try send("Target.attachToTarget", ["targetId": targetID, "flatten": true])
        guard let sessionID = attached["sessionId"] as? String else {
            throw ChromiumError("Target.attachToTarget: no sessionId")
        }
        let page = ChromiumPage(browser: self, targetID: targetID, sessionID: sessionID)
        guard try page.waitFor("location.href !== 'about:blank' && document.readyState === 'complete'", timeout: loadTimeout)
        else { throw ChromiumError("\(url) did not load within \(loadTimeout) s") }
        return page
    }

    // MARK: Stopping

    /// Closes the browser: Browser.close, then SIGKILL by PID when it has not
    /// exited within `timeout` seconds; reaps it, kills any helper left in its
    /// process group, and removes the profile. Safe to call twice.
    public func close(timeout: Double = 5) {
        guard !closed else { return }
        if process.isRunning { _ = try? send("Browser.close", timeout: min(timeout, 2)) }
        closed = true
        if process.waitForExit(timeout: timeout) == nil { process.kill() }
        for helper in Self.processes(inGroup: pid) { kill(helper, SIGKILL) }
        // A SIGKILLed process lingers until the kernel has torn it down (long, on a loaded machine):
        // close() returns once none is left (10 s is a backstop).
        _ = waitUntil(timeout: 10) { Self.processes(inGroup: pid).isEmpty }
        Glibc.close(commandFD)
        Glibc.close(messageFD)
        try? FileManager.default.removeItem(at: workDirectory)
    }

    /// Whether the browser process is still running (not yet reaped).
    public var isRunning: Bool { process.isRunning }

    /// Live PIDs whose process group is `group`.
    public static func processes(inGroup group: pid_t) -> [pid_t] {
        ProcessTable.live().filter { $0.group == group }.map(\.pid)
    }
}

/// A tab of a `Chromium`, attached with a flat session.
public struct ChromiumPage {
    public let browser: Chromium
    public let targetID: String
    public let sessionID: String

    /// Sends a command to this page.
    @discardableResult
    public func send(_ method: String, _ params: [String: Any] = [:], timeout: Double = 15) throws -> [String: Any] {
        try browser.send(method, params, sessionID: sessionID, timeout: timeout)
    }

    /// Evaluates `expression` (promises awaited) and returns its value as
    /// JSON-like Foundation values (nil for undefined or null); a JavaScript
    /// exception throws.
    @discardableResult
    public func evaluate(_ expression: String, timeout: Double = 15) throws -> Any? {
        let reply = try send(
            "Runtime.evaluate", ["expression": expression, "awaitPromise": true, "returnByValue": true], timeout: timeout)
        if let exception = reply["exceptionDetails"] as? [String: Any] {
            let description = (exception["exception"] as? [String: Any])?["description"] ?? exception["text"] ?? exception
            throw ChromiumError("JavaScript exception in `\(expression)`: \(description)")
        }
        let value = (reply["result"] as? [String: Any])?["value"]
        return value is NSNull ? nil : value
    }

    /// `expression`'s value as a string (String(describing:) of non-strings; nil for null).
    public func string(_ expression: String) throws -> String? {
        guard let value = try evaluate(expression) else { return nil }
        return value as? String ?? "\(value)"
    }

    /// Polls `expression` every 100 ms until it evaluates to `true`; false
    /// after `timeout` seconds. Errors while polling (a navigation destroying
    /// the context, an element not there yet) count as not yet; the last one
    /// is thrown at the deadline.
    public func waitFor(_ expression: String, timeout: Double = 10) throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        var lastError: (any Error)?
        repeat {
            do {
                if try evaluate(expression, timeout: max(1, deadline.timeIntervalSinceNow)) as? Bool == true { return true }
                lastError = nil
            } catch {
                lastError = error
            }
            usleep(100_000)
        } while Date() < deadline
        if let lastError { throw lastError }
        return false
    }

    /// Emulates a screen `width` × `height` CSS pixels (a phone's when `mobile`).
    public func setViewport(width: Int, height: Int, scale: Double = 1, mobile: Bool = false) throws {
        try send(
            "Emulation.setDeviceMetricsOverride",
            ["width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile])
    }

    /// A PNG screenshot of the page (the whole page when `fullPage`).
    public func screenshot(fullPage: Bool = true) throws -> Data {
        let reply = try send("Page.captureScreenshot", ["format": "png", "captureBeyondViewport": fullPage])
        guard let base64 = reply["data"] as? String, let png = Data(base64Encoded: base64) else {
            throw ChromiumError("Page.captureScreenshot: no image data")
        }
        return png
    }
}

public struct ChromiumError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
