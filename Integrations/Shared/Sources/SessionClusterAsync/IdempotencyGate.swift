import Logging
import SessionCore
import SessionMiddleware
import Synchronization

/// `Idempotency-Key` handling for async frameworks, with the semantics of
/// the core's `IdempotencyMiddleware` (the same `IdempotentRequest` decides):
/// records scoped to the caller's verified session (or anonymous, without
/// cookies); a retried POST is answered from the stored response
/// (`Idempotent-Replayed: true`) instead of running twice; a duplicate that
/// arrives while the first runs waits, then gets 409; a key reused by the
/// same session for a different request gets 422. Combined with the session
/// machinery (`SessionRequestManager`), the record is written in the same
/// atomic step as the request's session changes.
public struct IdempotencyGate: Sendable {
    /// Where claims and records live (the session store).
    public let store: any IdempotencyStore
    /// The session cookie's name and keys: a request's scope is its verified session ID.
    public let sessions: SessionConfiguration
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// TTLs, waits and the size cap of kept responses.
    public var policy: IdempotencyPolicy
    let logger: Logger

    /// A gate over `store` (usually the session store itself), for the
    /// sessions of `sessions` (the session middleware's configuration).
    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, executor: BlockingExecutor = .shared,
        policy: IdempotencyPolicy = IdempotencyPolicy(), logger: Logger
    ) {
        self.store = store
        self.sessions = sessions
        self.executor = executor
        self.policy = policy
        self.logger = logger
    }

    /// What to do with a request.
    public enum Decision: Sendable {
        /// Run it; with a ticket when it carries a key (finish or abandon the ticket afterwards).
        case run(IdempotencyTicket?)
        /// Answer with this stored response (its headers include `Idempotent-Replayed: true`).
        case replay(StoredResponse)
    }

    /// Claims the request's key. Requests without a key, and GET, HEAD and
    /// OPTIONS, run as they are. `cookie` gives the request's cookie of a
    /// name (the session cookie decides the scope). Throws a
    /// `SessionErrorResponse` for 400 (malformed key), 409 (still running
    /// elsewhere, or a kept record without its response), 422 (key reused)
    /// and 503 (store down).
    public func begin(
        key: String?, method: String, target: String, body: [UInt8], cookie: (String) -> String?
    ) async throws -> Decision {
        guard let key, IdempotentRequest.appliesTo(method: method) else { return .run(nil) }
        let scope = sessions.idempotencyScope(cookieValue: cookie(sessions.cookieName))
        let request: IdempotentRequest
        do {
            request = try IdempotentRequest(key: key, method: method, target: target, body: body, scope: scope)
        } catch {
            throw SessionErrorResponse(error)
        }
        return try await claim(request)
    }

    private func claim(_ request: IdempotentRequest) async throws -> Decision {
        let (store, policy) = (store, policy)
        var waited = 0
        while true {
            let claim: IdempotencyClaim
            do {
                claim = try await executor.run {
                    try store.begin(
                        key: request.storageKey, fingerprint: request.fingerprint,
                        inProgressMillis: policy.inProgressMillis)
                }
            } catch {
                throw SessionErrorResponse.from(error) ?? error
            }
            let step: IdempotencyStep
            do {
                step = try request.next(after: claim, waitedMillis: waited, policy: policy)
            } catch {
                throw SessionErrorResponse(error)
            }
            switch step {
            case .run: return .run(IdempotencyTicket(request: request, policy: policy))
            case .replay(let stored): return .replay(stored)
            case .wait(let millis):
                try await Task.sleep(for: .milliseconds(millis))  // parks the task, not a thread
                waited += millis
            }
        }
    }

    /// Records the outcome of a request that ran, unless the session
    /// machinery already wrote it with the request's session changes.
    public func finish(_ ticket: IdempotencyTicket, response: StoredResponse) async {
        guard !ticket.isRecorded, !ticket.isOvertaken else { return }
        let store = store
        let record = ticket.record(for: response)
        do {
            try await executor.run { try store.complete(record) }
        } catch {
            logger.error(
                "idempotency record not written",
                metadata: ["error": "\(error)", "idempotency_record": "\(ticket.request.logID)"])
            await abandon(ticket)
        }
    }

    /// The recorded response of a run that overtook `ticket`'s (see
    /// `IdempotencyTicket.isOvertaken`), or nil when there is none to replay.
    public func overtakingResponse(for ticket: IdempotencyTicket) async -> StoredResponse? {
        guard ticket.isOvertaken else { return nil }
        switch try? await claim(ticket.request) {
        case .replay(let stored)?:
            logger.notice(
                "another run of this request completed first", metadata: ["idempotency_record": "\(ticket.request.logID)"])
            return stored
        case .run(let claim?)?:
            await abandon(claim)  // the record is gone again (expired): nothing to replay, and no claim left behind
            return nil
        default:
            return nil
        }
    }

    /// Gives up a claim without an outcome (the request failed without a response), so a retry can run.
    public func abandon(_ ticket: IdempotencyTicket) async {
        let store = store
        let key = ticket.request.storageKey
        _ = try? await executor.run { try store.abandon(key: key) }
    }
}

/// A claimed `Idempotency-Key`, handed from the idempotency middleware to
/// the session middleware of the same request.
public final class IdempotencyTicket: Sendable {
    /// The keyed request (its scope, storage key and fingerprint).
    public let request: IdempotentRequest
    /// How its record is kept.
    public let policy: IdempotencyPolicy
    private let recorded = Atomic<Bool>(false)
    private let overtaken = Atomic<Bool>(false)

    /// A ticket for a claimed key.
    public init(request: IdempotentRequest, policy: IdempotencyPolicy) {
        self.request = request
        self.policy = policy
    }

    /// Whether the record was written with the session changes.
    public var isRecorded: Bool { recorded.load(ordering: .relaxed) }

    /// Notes that the record was written with the session changes.
    public func markRecorded() { recorded.store(true, ordering: .relaxed) }

    /// Whether another run of the request completed the key first, so this
    /// run's session changes were refused: answer with `IdempotencyGate.overtakingResponse`.
    public var isOvertaken: Bool { overtaken.load(ordering: .relaxed) }

    /// Notes that the store refused this run's changes (`idempotencyKeyCompleted`).
    public func markOvertaken() { overtaken.store(true, ordering: .relaxed) }

    /// The record of a response, as the policy keeps it (anonymous: no `Set-Cookie`; size-capped).
    public func record(for response: StoredResponse) -> IdempotencyRecord {
        request.record(for: response, policy: policy)
    }
}
