import ClusterLocks
import Logging
import MiniHTTP

/// Two `FencedResource`s on loopback HTTP, for lock workers in other
/// processes: `POST /fenced?token=N` (200, or 409 for a stale token) and
/// `POST /unfenced?token=N` (always 200; a stale write is counted).
public final class FencedResourceServer: Sendable {
    public let fenced = FencedResource(fenced: true)
    public let unfenced = FencedResource(fenced: false)
    private let server: HTTPServer

    /// Starts on a free port of 127.0.0.1.
    public init(logger: Logger) throws {
        let (fenced, unfenced) = (fenced, unfenced)
        server = HTTPServer(
            configuration: HTTPServerConfiguration(port: 0, eventLoops: 1, handlerThreads: 0), logger: logger
        ) { request in
            guard request.method == "POST", let token = request.query.flatMap(Self.token) else {
                return .text("POST /fenced?token=N or /unfenced?token=N\n", status: 400)
            }
            switch request.path {
            case "/fenced": return fenced.write(fencingToken: token) ? .text("ok\n") : .text("stale token\n", status: 409)
            case "/unfenced": return unfenced.write(fencingToken: token) ? .text("ok\n") : .text("refused\n", status: 409)
            default: return .text("not found\n", status: 404)
            }
        }
        try server.start()
    }

    /// The bound port.
    public var port: Int { server.port }

    public func stop() {
        server.shutdown()
        server.waitUntilStopped()
    }

    private static func token(_ query: String) -> Int64? {
        guard query.hasPrefix("token=") else { return nil }
        return Int64(query.dropFirst("token=".count))
    }
}
