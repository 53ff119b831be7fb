#if canImport(Glibc)
import Glibc
#endif
import Balancer
import Logging
import MiniHTTP
import Synchronization
import SystemSupport
import TestSupport
import Testing

/// Balancer settings for tests: ephemeral port, short timeouts so a failing
/// test cannot keep `shutdown()` waiting for long.
func testBalancerConfiguration(backends: [BackendConfiguration]) -> BalancerConfiguration {
    var c = BalancerConfiguration(host: "127.0.0.1", port: 0, backends: backends, eventLoops: 2)
    c.clientHeaderTimeoutMillis = 2_000
    c.clientBodyTimeoutMillis = 2_000
    c.clientIdleTimeoutMillis = 5_000
    c.clientWriteTimeoutMillis = 3_000
    c.backendConnectTimeoutMillis = 1_000
    c.backendResponseTimeoutMillis = 3_000
    c.backendIdleTimeoutMillis = 3_000
    c.shutdownGraceMillis = 2_000
    return c
}

/// Starts a balancer, runs `body`, and always shuts it down afterwards.
func withBalancer(
    _ configuration: BalancerConfiguration, localRoutes: [Balancer.LocalRoute] = [], _ body: (Balancer) throws -> Void
) throws {
    let balancer = try Balancer(configuration: configuration, logger: quietLogger(), localRoutes: localRoutes)
    try balancer.start()
    defer { balancer.shutdown() }
    try #require(balancer.port > 0)
    try body(balancer)
}

/// A thread-safe value to switch.
final class Shared<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    var value: Value {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
    func update(_ body: (inout Value) -> Void) { storage.withLock { body(&$0) } }
}

/// An in-process backend: a MiniHTTP server that names itself in `X-Backend`
/// and counts the requests its handler saw (`/healthz` apart: it answers
/// `healthStatus` and counts the checks by status).
final class TestBackend: Sendable {
    let name: String
    let server: HTTPServer
    let handled = Counter()
    let healthStatus = Shared(200)
    let healthChecks = Shared([Int: Int]())

    init(name: String, port: Int = 0, idleTimeoutMillis: Int = 5_000) throws {
        self.name = name
        let handled = self.handled
        let healthStatus = self.healthStatus
        let healthChecks = self.healthChecks
        var router = Router()
        let tag: HTTPHeaders = ["X-Backend": name]
        @Sendable func tagged(_ r: HTTPResponse) -> HTTPResponse {
            var r = r
            for f in tag { r.headers.add(name: f.name, value: f.value) }
            return r
        }
        router.get("/") { _ in handled.increment(); return tagged(.text(name)) }
        router.get("/healthz") { _ in
            let status = healthStatus.value
            healthChecks.update { $0[status, default: 0] += 1 }
            return .text(status == 200 ? "ok" : "unhealthy", status: status)
        }
        router.get("/name") { _ in handled.increment(); return tagged(.text(name)) }
        router.post("/name") { _ in handled.increment(); return tagged(.text(name)) }
        router.post("/echo") { request in
            handled.increment()
            return tagged(HTTPResponse(status: 200, headers: ["Content-Type": "application/octet-stream"], body: request.body))
        }
        router.put("/echo") { request in
            handled.increment()
            return tagged(HTTPResponse(status: 200, headers: ["Content-Type": "application/octet-stream"], body: request.body))
        }
        router.get("/headers") { request in
            handled.increment()
            let text = request.headers.map { "\($0.name): \($0.value)" }.joined(separator: "\n")
            return tagged(.text(text))
        }
        router.get("/big") { request in
            handled.increment()
            let n = Int(request.query?.split(separator: "=").last ?? "0") ?? 0
            return tagged(HTTPResponse(status: 200, headers: [:], body: pattern(n, seed: 7)))
        }
        router.get("/slow") { _ in
            handled.increment()
            usleep(300_000)
            return tagged(.text("slow"))
        }
        server = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: "127.0.0.1", port: port, eventLoops: 1, handlerThreads: 4, maxConnections: 256,
                limits: HTTPParserLimits(maxBodyBytes: 32 << 20), headerTimeoutMillis: 2_000,
                bodyTimeoutMillis: 2_000, idleTimeoutMillis: idleTimeoutMillis, writeTimeoutMillis: 5_000,
                shutdownGraceMillis: 2_000),
            logger: quietLogger(), responder: router.responder)
        try server.start()
    }

    var configuration: BackendConfiguration { BackendConfiguration(name: name, host: "127.0.0.1", port: server.port) }

    /// Stops the server. The balancer must never have forwarded it a malformed request.
    func stop() {
        server.shutdown()
        #expect(server.statistics.parseErrors == 0, "\(name) received a malformed request from the balancer")
    }
}

/// Starts `count` backends named b0, b1, ...; always stops them afterwards.
func withBackends(_ count: Int, _ body: ([TestBackend]) throws -> Void) throws {
    var backends: [TestBackend] = []
    defer { for b in backends { b.stop() } }
    for i in 0..<count { backends.append(try TestBackend(name: "b\(i)")) }
    try body(backends)
}

/// Deterministic bytes for body checks.
func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    var out = [UInt8]()
    out.reserveCapacity(count + 8)
    while out.count < count {
        var v = rng.next()
        for _ in 0..<8 {
            out.append(UInt8(truncatingIfNeeded: v))
            v >>= 8
        }
    }
    out.removeLast(out.count - count)
    return out
}

/// A port nothing listens on (bound, then closed).
func closedPort() throws -> Int { try Sockets.freeLoopbackPort() }

/// One GET on a new connection.
func get(_ port: Int, _ target: String, headers: String = "") throws -> RawHTTPResponse? {
    let client = try RawHTTPConnection(port: port)
    defer { client.close() }
    client.send("GET \(target) HTTP/1.1\r\nHost: test\r\n\(headers)\r\n")
    return client.readResponse()
}

/// A scripted backend: a blocking listener whose connections are handed,
/// each on its own thread, to `handler`.
final class ScriptedBackend: Sendable {
    let listenFD: Int32
    let port: Int
    let connections = Counter()
    let requests = Counter()
    /// Connections whose handler returned and which were closed by the backend.
    let closedConnections = Counter()
    /// Requests it could not parse: the balancer must never forward one (checked by `stop()`).
    let malformedRequests = Shared([String]())
    private let stopped = Mutex(false)
    /// Open connections; a descriptor leaves the set before it is closed, so it is never
    /// reused while in it.
    private let open = Mutex<Set<Int32>>([])

    init(_ handler: @escaping @Sendable (ScriptedConnection) -> Void) throws {
        listenFD = try Sockets.listen(host: "127.0.0.1", port: 0)
        port = Sockets.localPort(listenFD)
        startThread { [self] in
            while true {
                let fd = Sockets.accept(listenFD)
                if fd < 0 {
                    if errno == EINTR { continue }
                    return
                }
                if stopped.withLock({ $0 }) {
                    Glibc.close(fd)
                    return
                }
                connections.increment()
                open.withLock { _ = $0.insert(fd) }
                let conn = ScriptedConnection(fd: fd, requests: requests, malformed: malformedRequests)
                startThread { [self] in
                    handler(conn)
                    open.withLock { _ = $0.remove(fd) }
                    conn.close()
                    closedConnections.increment()
                }
            }
        }
    }

    func configuration(_ name: String) -> BackendConfiguration {
        BackendConfiguration(name: name, host: "127.0.0.1", port: port)
    }

    /// Stops the backend gracefully (its connections end with a FIN). The balancer must never
    /// have forwarded it a malformed request.
    func stop() {
        stopListening()
        open.withLock { for fd in $0 { shutdown(fd, Int32(SHUT_RDWR)) } }
        let malformed = malformedRequests.value
        #expect(malformed.isEmpty, "the balancer forwarded malformed requests: \(malformed)")
    }

    /// Kills the backend as the death of its process would, seen from the network: the listener
    /// refuses connections, and every open connection is reset (RST, SO_LINGER 0), not closed with
    /// a FIN. A request already read may still be answered by its handler, as by a process that
    /// dies a moment later.
    func kill() {
        stopListening()
        open.withLock {
            for fd in $0 {
                var reset = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<Glibc.linger>.size))
                shutdown(fd, Int32(SHUT_RD))  // wakes its handler's read; its close then sends the reset
            }
        }
    }

    private func stopListening() {
        let wasStopped = stopped.withLock { s -> Bool in
            defer { s = true }
            return s
        }
        guard !wasStopped else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
    }
}

/// One connection of a `ScriptedBackend`.
final class ScriptedConnection: @unchecked Sendable {  // used by its one handler thread
    let fd: Int32
    private var parser = HTTPRequestParser(limits: HTTPParserLimits(maxBodyBytes: 64 << 20))
    private let requests: Counter
    private let malformed: Shared<[String]>
    private var closed = false

    init(fd: Int32, requests: Counter, malformed: Shared<[String]>) {
        self.fd = fd
        self.requests = requests
        self.malformed = malformed
        Sockets.setReceiveTimeout(fd, millis: 5_000)
    }

    /// Reads one whole request; nil when the connection ends first, or when the request is
    /// malformed (then it is recorded, and `ScriptedBackend.stop()` fails the test).
    func readRequest() -> (head: HTTPRequestHead, body: [UInt8])? {
        var head: HTTPRequestHead? = nil
        var body: [UInt8] = []
        while true {
            let next: HTTPRequestParser.Event?
            do {
                next = try parser.next()
            } catch {
                malformed.update { $0.append("\(error)") }
                return nil
            }
            guard let event = next else {
                var chunk = [UInt8](repeating: 0, count: 65_536)
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n <= 0 { return nil }
                parser.append(chunk[0..<n])
                continue
            }
            switch event {
            case .head(let h): head = h
            case .body(let b): body.append(contentsOf: b)
            case .end:
                requests.increment()
                return (head!, body)
            }
        }
    }

    @discardableResult
    func write(_ text: String) -> Bool { Sockets.writeAll(fd, Array(text.utf8)) }

    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool { Sockets.writeAll(fd, bytes) }

    func close() {
        if !closed {
            closed = true
            Glibc.close(fd)
        }
    }

    /// Closes with a reset (RST) instead of a FIN.
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }
}
