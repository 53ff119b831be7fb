import Logging
import MiniHTTP
import SessionCore

#if canImport(Glibc)
import Glibc
#endif

/// Answers a retried request (same `Idempotency-Key`) from the stored
/// response instead of running it twice.
///
/// Install it in front of `SessionMiddleware`, with the same
/// `SessionConfiguration`: the session middleware then writes the record in
/// the same atomic step as the session changes the request made, so a node
/// that dies mid-request leaves either both or neither, and a balancer may
/// safely retry the POST on another node.
///
/// - Records are scoped to their caller (`IdempotencyScope`): a request with a
///   verified session cookie sees only its session's records; a request
///   without one sees only anonymous records, which never keep a
///   `Set-Cookie`. No client can replay, probe or pre-empt another's key.
/// - A request with a key that completed before gets its stored response,
///   with `Idempotent-Replayed: true`.
/// - A duplicate that arrives while the first is still running waits up to
///   `policy.waitMillis`, then gets 409.
/// - A key reused by the same session for a different request (method,
///   target or body) gets 422.
/// - A response over `policy.maxStoredResponseBytes` is answered, but its
///   record keeps only that it completed: a retry gets 409
///   `idempotency_response_not_kept`, never a second run.
/// - A request that fails without a response (an error was thrown, the store
///   was down) leaves no record, so it can be retried.
/// - A claim whose node died is taken over by the next retry as soon as the
///   store can tell (Redis: the claiming connection is gone; memory and
///   replicated stores: claims die with their node), else after
///   `policy.inProgressMillis`. Should the first run still finish, the store
///   refuses its session changes once a record exists, and it answers with
///   the recorded response: the session changes apply once.
/// - Logs name a key by `IdempotentRequest.logID`, a short hash, never in clear.
public struct IdempotencyMiddleware: HTTPMiddleware {
    /// Claims, records and replays (`IdempotencyGate`'s steps, on MiniHTTP).
    public let gate: IdempotencyGate

    /// - Parameters:
    ///   - store: where claims and records are kept: the sessions' store, so that the
    ///     session middleware can write a record with the session's changes.
    ///   - sessions: the configuration of the `SessionMiddleware` behind this one.
    ///   - policy: how long records and claims last, how long a duplicate waits, and the
    ///     largest response a record keeps.
    ///   - logger: where overtaken runs and records that could not be written are logged.
    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, policy: IdempotencyPolicy = IdempotencyPolicy(),
        logger: Logger
    ) {
        gate = IdempotencyGate(store: store, sessions: sessions, policy: policy, logger: logger)
    }

    public func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
        let found: IdempotentRequest?
        do {
            found = try gate.keyedRequest(
                key: request.headers["Idempotency-Key"], method: request.method, target: request.head.target,
                body: request.body, cookie: { request.cookie($0) })
        } catch {
            throw HTTPError(error)
        }
        guard let keyed = found else { return try next(request) }
        let ticket: IdempotencyTicket
        var waited = 0
        claiming: while true {
            let step: IdempotencyGate.Step
            do { step = try gate.claim(keyed, waitedMillis: waited) } catch let answer as SessionErrorAnswer {
                throw HTTPError(answer)
            }
            switch step {
            case .run(let claimed):
                ticket = claimed
                break claiming
            case .replay(let stored):
                return HTTPResponse(stored)
            case .wait(let millis):
                usleep(UInt32(millis) * 1000)
                waited += millis
            }
        }
        var request = request
        request.storage[IdempotencyTicketKey.self] = ticket
        do {
            return try gate.run(ticket, replay: HTTPResponse.init, record: StoredResponse.init) { try next(request) }
        } catch let answer as SessionErrorAnswer {
            throw HTTPError(answer)
        }
    }
}

/// Hands the claimed key from `IdempotencyMiddleware` to `SessionMiddleware` through the request.
enum IdempotencyTicketKey: RequestStorageKey { typealias Value = IdempotencyTicket }
