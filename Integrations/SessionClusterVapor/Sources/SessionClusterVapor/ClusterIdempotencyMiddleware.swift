import SessionClusterAsync
import SessionCore
import Vapor

/// Runs a POST carrying an `Idempotency-Key` once, as the core's
/// `IdempotencyMiddleware` does: records are scoped to the caller's session
/// (anonymous ones keep no cookie); a retry (the balancer's or the client's)
/// gets the stored response with `Idempotent-Replayed: true`, a concurrent
/// duplicate waits then gets 409, a key reused for another request 422.
///
/// Install it in front of `ClusterSessionsMiddleware`: the session changes
/// and the record are then written in one atomic step. The request body is
/// collected (up to `maxBodyBytes`) to fingerprint the request.
public struct ClusterIdempotencyMiddleware: AsyncMiddleware {
    /// Claims, records and replays.
    public let gate: AsyncIdempotencyGate
    /// The largest request body read for the fingerprint.
    public var maxBodyBytes: Int

    /// A middleware over a gate.
    public init(gate: AsyncIdempotencyGate, maxBodyBytes: Int = 1 << 20) {
        self.gate = gate
        self.maxBodyBytes = maxBodyBytes
    }

    /// A middleware keeping records in `store` (usually the session store),
    /// for the sessions of `sessions` (the session middleware's configuration).
    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, executor: BlockingExecutor = .shared,
        logger: Logger
    ) {
        self.init(gate: AsyncIdempotencyGate(store: store, sessions: sessions, executor: executor, logger: logger))
    }

    public func respond(to request: Request, chainingTo next: any AsyncResponder) async throws -> Response {
        let key = request.headers.first(name: "Idempotency-Key")
        guard key != nil, IdempotentRequest.appliesTo(method: request.method.rawValue) else {
            return try await next.respond(to: request)
        }
        let body = try await request.body.collect(max: maxBodyBytes).get()
        let decision: AsyncIdempotencyGate.Decision
        do {
            decision = try await gate.begin(
                key: key, method: request.method.rawValue, target: request.url.string,
                body: body.map { Array($0.readableBytesView) } ?? [], cookie: { request.cookies[$0]?.string })
        } catch let error as SessionErrorAnswer {
            return error.vaporResponse
        }
        func replay(_ stored: StoredResponse) -> Response {
            Response(
                status: HTTPResponseStatus(statusCode: stored.status),
                headers: HTTPHeaders(stored.headers.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }),
                body: Response.Body(buffer: ByteBuffer(bytes: stored.body)))
        }
        switch decision {
        case .replay(let stored):
            return replay(stored)
        case .run(nil):
            return try await next.respond(to: request)
        case .run(let ticket?):
            request.storage[IdempotencyTicketKey.self] = ticket
            do {
                return try await gate.run(
                    ticket, replay: replay, record: { response in try await response.storedResponse(on: request.eventLoop) }
                ) { try await next.respond(to: request) }
            } catch let answer as SessionErrorAnswer {
                return answer.vaporResponse
            }
        }
    }
}
