#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

// The issue's "10,000 idle connections open while another client still gets
// answers", with the balancer in its own process (`session-cluster proxy`),
// so that only the client side of each connection is a descriptor of the
// test process.

/// How many idle connections the test opens: 10,000, or fewer when the
/// descriptor limit (raised to its hard limit first) leaves less room, with
/// 500 descriptors of headroom (the backend, the test runner, the proxy's
/// own backend connections: the proxy inherits the same limit). Never fewer
/// than 5,000: below that the test is skipped (see `hasRoom`).
private let idleTarget = 10_000
private let idleMinimum = 5_000
private let descriptorHeadroom = 500

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in effect.
private func raiseDescriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1_024 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
    }
    return limit.rlim_cur > rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
}

private func idleCount() -> Int { min(idleTarget, raiseDescriptorLimit() - descriptorHeadroom) }

/// Whether the descriptor limit allows at least `idleMinimum` idle connections.
private let hasRoom = idleCount() >= idleMinimum

/// Sends one GET on `fd` and reads the response; its status, nil on error or timeout.
private func oneRequest(_ fd: Int32, target: String = "/name", timeoutMillis: Int = 5_000) -> Int? {
    guard Sockets.writeAll(fd, Array("GET \(target) HTTP/1.1\r\nHost: idle-test\r\n\r\n".utf8)) else { return nil }
    var parser = HTTPResponseParser()
    let deadline = monotonicMillis() + Int64(timeoutMillis)
    var status: Int?
    while true {
        let event: HTTPResponseParser.Event?
        do { event = try parser.next() } catch { return nil }
        switch event {
        case .head(let head): status = head.status
        case .body: break
        case .end:
            if let s = status, s >= 200 { return s }
            status = nil
        case nil:
            guard case .bytes(let bytes) = receiveSome(fd, deadline: deadline) else { return nil }
            parser.append(bytes)
        }
    }
}

/// What the client threads collect: the idle descriptors, and failures.
private final class Collected: Sendable {
    let fds = Mutex<[Int32]>([])
    let failures = Mutex<[String]>([])
}

/// The proxy's RSS with the idle clients open must stay under this: README's target
/// ("Our RSS with 10,000 idle keep-alive clients: 28.0 MB ... target ≤ 100 MB"), measured
/// at 28 MB, so far from any noise; a proxy that kept a buffer per idle client (64 KiB each:
/// 640 MB) or leaked per connection would exceed it.
private let rssBoundKB = 100 * 1_024

/// RSS of a process in kB, from /proc/PID/status (0 when unreadable).
private func rssKB(_ pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
    return 0
}

@Suite("Balancer process: 10,000 idle clients", .serialized, .timeLimit(.minutes(5)), .tags(.integration))
struct IdleClientsProcessTests {
    @Test(
        .enabled(
            if: hasRoom,
            "needs RLIMIT_NOFILE (hard) of at least \(idleMinimum + descriptorHeadroom) for \(idleMinimum)+ idle connections"))
    func tenThousandIdleConnectionsWhileAnotherClientIsServed() throws {
        let count = idleCount()
        if count < idleTarget {
            print("IdleClientsProcessTests: the descriptor limit allows \(count) idle connections, not \(idleTarget)")
        }
        let backend = try TestBackend(name: "b0", idleTimeoutMillis: 30_000)
        defer { backend.stop() }

        let port = try Sockets.freeLoopbackPort()
        let proxy = try ChildProcess(
            try ChildProcess.sessionClusterBinary(),
            [
                "proxy", "--listen", "127.0.0.1:\(port)", "--backend", "b0=127.0.0.1:\(backend.server.port)",
                "--event-loops", "2", "--client-idle-timeout-ms", "120000", "--shutdown-grace-ms", "2000",
                "--max-connections", "\(idleTarget + 1_000)", "--log-level", "warning",
            ])
        defer { proxy.stop(timeout: 5) }
        try #require(
            waitUntil(timeout: 10) {
                guard let fd = try? Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 500) else { return false }
                defer { close(fd) }
                return oneRequest(fd, timeoutMillis: 1_000) == 200
            }, "the proxy did not answer:\n\(proxy.output)")
        let rssBefore = rssKB(proxy.pid)

        // The idle clients: each connects, completes one keep-alive request, then stays open.
        let collected = Collected()
        defer { for fd in collected.fds.withLock({ $0 }) { close(fd) } }
        let threads = 8
        let start = monotonicMillis()
        let finished = onThreads(threads, seconds: 180) { t in
            let share = count / threads + (t < count % threads ? 1 : 0)
            for _ in 0..<share {
                let fd: Int32
                do {
                    fd = try Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 5_000)
                } catch {
                    collected.failures.withLock { $0.append("connect: \(error)") }
                    return
                }
                collected.fds.withLock { $0.append(fd) }
                let status = oneRequest(fd)
                if status != 200 {
                    collected.failures.withLock { $0.append("first request: status \(status.map(String.init) ?? "none")") }
                    return
                }
            }
        }
        try #require(finished, "the idle clients were not all connected within 180 s")
        let failed = collected.failures.withLock { $0 }
        try #require(failed.isEmpty, "\(failed.count) idle clients failed, first: \(failed.prefix(3))\n\(proxy.output)")
        let fds = collected.fds.withLock { $0 }
        try #require(fds.count == count)
        let openMillis = monotonicMillis() - start

        // Another client, while they are held: 20 answers (each within `oneRequest`'s 5 s).
        let client = try Sockets.connect(host: "127.0.0.1", port: port, timeoutMillis: 2_000)
        defer { close(client) }
        var slowest: Int64 = 0  // printed, not checked: a duration is the benchmark's business
        for i in 0..<20 {
            let t0 = monotonicMillis()
            let status = oneRequest(client)
            #expect(status == 200, "request \(i) of the other client: status \(status.map(String.init) ?? "none")")
            slowest = max(slowest, monotonicMillis() - t0)
        }

        // Every idle connection is still open: nothing to read, no FIN, no reset.
        var open = 0
        for fd in fds {
            var byte: UInt8 = 0
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { open += 1 }
        }
        #expect(open == count, "\(count - open) of the \(count) idle connections were closed")
        let rssWith = rssKB(proxy.pid)
        #expect(rssWith > 0, "the proxy's RSS could not be read")
        #expect(rssWith <= rssBoundKB, "proxy RSS \(rssWith / 1024) MB with \(count) idle clients; the bound is \(rssBoundKB / 1024) MB")
        print(
            "IdleClientsProcessTests: \(count) idle clients opened in \(openMillis) ms; proxy RSS \(rssBefore / 1024) MB "
                + "before, \(rssWith / 1024) MB with them; other client's slowest answer \(slowest) ms")

        // Close them all; the proxy still answers, and stops cleanly by its PID.
        collected.fds.withLock { fds in
            for fd in fds { close(fd) }
            fds = []
        }
        #expect(oneRequest(client) == 200)
        #expect(proxy.stop(timeout: 5) == 0, "the proxy did not exit cleanly:\n\(proxy.output)")
    }
}
