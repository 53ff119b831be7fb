import Logging
import MiniHTTP
import SessionCore
import Synchronization

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
    public let store: any IdempotencyStore
    /// TTLs, waits and the size cap of kept responses.
    public var policy: IdempotencyPolicy
    /// The session cookie's name and keys: a request's scope is its verified session ID.
    public let sessions: SessionConfiguration
    let logger: Logger

    /// - Parameter sessions: the configuration of the `SessionMiddleware` behind this one.
    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, policy: IdempotencyPolicy = IdempotencyPolicy(),
        logger: Logger
    ) {
        self.store = store
        self.sessions = sessions
        self.policy = policy
        self.logger = logger
    }

    public func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
        guard let key = request.headers["Idempotency-Key"], IdempotentRequest.appliesTo(method: request.method) else {
            return try next(request)
        }
        let scope = sessions.idempotencyScope(cookieValue: request.cookie(sessions.cookieName))
        let keyed: IdempotentRequest
        do {
            keyed = try IdempotentRequest(
                key: key, method: request.method, target: request.head.target, body: request.body, scope: scope)
        } catch {
            throw HTTPError(error)
        }
        var overtaken = false
        while true {
            if let stored = try claim(keyed) {
                return HTTPResponse(
                    status: stored.status,
                    headers: HTTPHeaders(stored.headers.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }),
                    body: stored.body)
            }
            let context = IdempotencyContext(request: keyed, policy: policy)
            var request = request
            request.storage[IdempotencyContext.Key.self] = context
            let response: HTTPResponse
            do {
                response = try next(request)
            } catch where context.isOvertaken && !overtaken {
                // A retry took over this claim (its node thought this one dead) and finished
                // first; nothing of this run was written. Answer with that run's response.
                overtaken = true
                logger.notice("another run of this request completed first", metadata: ["idempotency_record": "\(keyed.logID)"])
                continue
            } catch {
                try? store.abandon(key: keyed.storageKey)
                throw error
            }
            if !context.isRecorded {
                // The request changed no session: its record stands alone.
                do {
                    try store.complete(context.record(for: response))
                } catch {
                    logger.error(
                        "idempotency record not written",
                        metadata: ["error": "\(error)", "idempotency_record": "\(keyed.logID)"])
                    try? store.abandon(key: keyed.storageKey)
                }
            }
            return response
        }
    }

    /// Claims the request's key: nil when it may run now, or the response to
    /// replay. Waits up to `policy.waitMillis` for a run in progress.
    private func claim(_ keyed: IdempotentRequest) throws -> StoredResponse? {
        var waited = 0
        while true {
            let claim: IdempotencyClaim
            do {
                claim = try store.begin(
                    key: keyed.storageKey, fingerprint: keyed.fingerprint, inProgressMillis: policy.inProgressMillis)
            } catch let error as SessionStoreError {
                throw SessionMiddleware.httpError(for: error)
            }
            let step: IdempotencyStep
            do {
                step = try keyed.next(after: claim, waitedMillis: waited, policy: policy)
            } catch {
                throw HTTPError(error)
            }
            switch step {
            case .run: return nil
            case .replay(let stored): return stored
            case .wait(let millis):
                usleep(UInt32(millis) * 1000)
                waited += millis
            }
        }
    }
}

extension HTTPError {
    /// The HTTP answer of an idempotency refusal.
    public init(_ refusal: IdempotencyRefusal) {
        self.init(
            status: refusal.status, code: refusal.code, message: refusal.message,
            headers: refusal.retryAfterSeconds.map { ["Retry-After": String($0)] } ?? [:])
    }
}

/// Handed from `IdempotencyMiddleware` to `SessionMiddleware` through the request.
final class IdempotencyContext: Sendable {
    enum Key: RequestStorageKey { typealias Value = IdempotencyContext }

    let request: IdempotentRequest
    let policy: IdempotencyPolicy
    private let recorded = Atomic<Bool>(false)
    private let overtaken = Atomic<Bool>(false)

    init(request: IdempotentRequest, policy: IdempotencyPolicy) {
        self.request = request
        self.policy = policy
    }

    var isRecorded: Bool { recorded.load(ordering: .relaxed) }
    func markRecorded() { recorded.store(true, ordering: .relaxed) }
    /// The store refused this run's changes: another run completed the key first.
    var isOvertaken: Bool { overtaken.load(ordering: .relaxed) }
    func markOvertaken() { overtaken.store(true, ordering: .relaxed) }

    /// The record of `response`, as the policy keeps it (anonymous: no `Set-Cookie`; size-capped).
    func record(for response: HTTPResponse) -> IdempotencyRecord {
        request.record(
            for: StoredResponse(
                status: response.status, headers: response.headers.map { [$0.name, $0.value] }, body: response.body),
            policy: policy)
    }
}
