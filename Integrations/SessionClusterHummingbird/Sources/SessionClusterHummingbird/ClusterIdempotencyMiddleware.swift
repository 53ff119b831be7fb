import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SessionClusterAsync
import SessionCore

/// Runs a POST carrying an `Idempotency-Key` once, as the core's
/// `IdempotencyMiddleware` does: records are scoped to the caller's session
/// (anonymous ones keep no cookie); a retry (the balancer's or the client's)
/// gets the stored response with `Idempotent-Replayed: true`, a concurrent
/// duplicate waits then gets 409, a key reused for another request 422.
///
/// Install it in front of `ClusterSessionMiddleware`: the session changes
/// and the record are then written in one atomic step, so a node that dies
/// mid-request leaves both or neither, and a balancer may retry the POST on
/// another node. The request body is read into memory to fingerprint it
/// (up to the context's `maxUploadSize`).
public struct ClusterIdempotencyMiddleware<Context: ClusterSessionRequestContext>: RouterMiddleware {
    /// Claims, records and replays.
    public let gate: AsyncIdempotencyGate

    /// A middleware over a gate.
    public init(gate: AsyncIdempotencyGate) {
        self.gate = gate
    }

    /// A middleware keeping records in `store` (usually the session store),
    /// for the sessions of `sessions` (the session middleware's configuration).
    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, executor: BlockingExecutor = .shared,
        logger: Logger
    ) {
        gate = AsyncIdempotencyGate(store: store, sessions: sessions, executor: executor, logger: logger)
    }

    public func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let key = request.headers[HTTPField.Name("Idempotency-Key")!]
        guard key != nil, IdempotentRequest.appliesTo(method: request.method.rawValue) else {
            return try await next(request, context)
        }
        var request = request
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        request.body = RequestBody(buffer: body)
        let decision: AsyncIdempotencyGate.Decision
        do {
            decision = try await gate.begin(
                key: key, method: request.method.rawValue, target: request.uri.description,
                body: Array(body.readableBytesView), cookie: { request.cookies[$0]?.value })
        } catch let error as SessionErrorAnswer {
            return error.hummingbirdResponse
        }
        func replay(_ stored: StoredResponse) -> Response {
            var fields = HTTPFields()
            for pair in stored.headers where pair.count == 2 {
                if let name = HTTPField.Name(pair[0]) { fields.append(HTTPField(name: name, value: pair[1])) }
            }
            return Response(
                status: HTTPResponse.Status(code: stored.status), headers: fields,
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: stored.body)))
        }
        switch decision {
        case .replay(let stored):
            return replay(stored)
        case .run(nil):
            return try await next(request, context)
        case .run(let ticket?):
            var context = context
            context.clusterSessions.idempotency = ticket
            do {
                return try await gate.run(
                    ticket, replay: replay,
                    record: { response in
                        StoredResponse(
                            status: response.status.code, headers: response.headers.map { [$0.name.rawName, $0.value] },
                            body: try await response.collectBody())
                    }) { try await next(request, context) }
            } catch let answer as SessionErrorAnswer {
                return answer.hummingbirdResponse
            }
        }
    }
}
