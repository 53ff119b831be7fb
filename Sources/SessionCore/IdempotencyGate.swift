import Logging
import Synchronization

/// `Idempotency-Key` handling with no transport: the steps every binding
/// (the MiniHTTP middleware, the Hummingbird and Vapor adapters) drives.
///
/// 1. `keyedRequest` — nil for a request without a key, or a GET, HEAD or OPTIONS.
/// 2. `claim` until it says `run` (with a ticket) or `replay` (a stored
///    response); on `wait`, the binding sleeps (a thread or a task) and claims again.
/// 3. `run` — the request runs with the ticket (the session machinery writes the
///    record with the session changes, `SessionCommit`); then the response of a
///    run that completed the key first answers instead (`overtakingResponse`), a
///    request that changed no session gets its record (`finish`), and one that
///    failed gives up its claim (`abandon`). An async binding drives the same
///    steps around an async body.
///
/// Store calls block: an async binding runs them on its executor.
public struct IdempotencyGate: Sendable {
    /// Where claims and records live (the session store).
    public let store: any IdempotencyStore
    /// The session cookie's name and keys: a request's scope is its verified session ID.
    public let sessions: SessionConfiguration
    /// TTLs, waits and the size cap of kept responses.
    public var policy: IdempotencyPolicy
    let logger: Logger

    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, policy: IdempotencyPolicy = IdempotencyPolicy(),
        logger: Logger
    ) {
        self.store = store
        self.sessions = sessions
        self.policy = policy
        self.logger = logger
    }

    /// What a claim says.
    public enum Step: Sendable {
        /// Run the request with this ticket.
        case run(IdempotencyTicket)
        /// Answer with this stored response (its headers include `Idempotent-Replayed: true`).
        case replay(StoredResponse)
        /// A run is in progress: claim again after this many milliseconds.
        case wait(millis: Int)
    }

    /// The keyed request, or nil when `key` is nil or the method is never keyed. `cookie` gives
    /// the request's cookie of a name (the session cookie decides the scope). Throws 400 for a
    /// malformed key.
    public func keyedRequest(
        key: String?, method: String, target: String, body: [UInt8], cookie: (String) -> String?
    ) throws(SessionErrorAnswer) -> IdempotentRequest? {
        guard let key, IdempotentRequest.appliesTo(method: method) else { return nil }
        let scope = sessions.idempotencyScope(cookieValue: cookie(sessions.cookieName))
        return try IdempotentRequest(key: key, method: method, target: target, body: body, scope: scope)
    }

    /// Claims the request's key once (blocking). Throws a `SessionErrorAnswer`: 409 (still
    /// running after `policy.waitMillis`, or a kept record without its response), 422 (the key
    /// reused for another request) and 503 (store down). Any other error of the store passes
    /// through as it is, for the transport to handle as usual.
    public func claim(_ request: IdempotentRequest, waitedMillis: Int) throws -> Step {
        let claim: IdempotencyClaim
        do {
            claim = try store.begin(
                key: request.storageKey, fingerprint: request.fingerprint, inProgressMillis: policy.inProgressMillis)
        } catch {
            throw SessionErrorAnswer.from(error) ?? error
        }
        switch try request.next(after: claim, waitedMillis: waitedMillis, policy: policy) {
        case .run: return .run(IdempotencyTicket(request: request, policy: policy))
        case .replay(let stored): return .replay(stored)
        case .wait(let millis): return .wait(millis: millis)
        }
    }

    /// After the request ran: the recorded response of a run that overtook this one (a retry
    /// took over the claim, its node thought this one dead, and finished first; nothing of this
    /// run was written), to answer instead. Nil when not overtaken, or when that record is gone
    /// again — then no claim is left behind, and the request is never run a second time. Throws
    /// the `SessionErrorAnswer` of a record that cannot be replayed (409: its response was not
    /// kept, or another run holds the key now).
    public func overtakingResponse(for ticket: IdempotencyTicket) throws(SessionErrorAnswer) -> StoredResponse? {
        guard ticket.isOvertaken else { return nil }
        let step: Step
        do {
            step = try claim(ticket.request, waitedMillis: policy.waitMillis)
        } catch let answer as SessionErrorAnswer {
            throw answer
        } catch {
            return nil
        }
        switch step {
        case .replay(let stored):
            logger.notice(
                "another run of this request completed first", metadata: ["idempotency_record": "\(ticket.request.logID)"])
            return stored
        case .run(let claim):
            abandon(claim)
            return nil
        case .wait:
            return nil
        }
    }

    /// Runs a claimed request (`body`, with `ticket` handed to its session machinery) and settles
    /// the ticket: a run that overtook this one answers instead (`replay`); a request that
    /// changed no session gets its record now (`record` makes it from the response); one that
    /// failed gives up its claim, so a retry can run. Errors of `body` pass through.
    public func run<Response>(
        _ ticket: IdempotencyTicket, replay: (StoredResponse) -> Response, record: (Response) throws -> StoredResponse,
        _ body: () throws -> Response
    ) throws -> Response {
        let response: Response
        do {
            response = try body()
        } catch {
            if let stored = try overtakingResponse(for: ticket) { return replay(stored) }
            if !ticket.isOvertaken { abandon(ticket) }  // an overtaken run has no claim of its own left
            throw error
        }
        if let stored = try overtakingResponse(for: ticket) { return replay(stored) }
        if ticket.needsStandaloneRecord { finish(ticket, response: try record(response)) }
        return response
    }

    /// Records the response of a request whose record was not written with session changes
    /// (`IdempotencyTicket.needsStandaloneRecord`). A failure is logged and the claim given up.
    public func finish(_ ticket: IdempotencyTicket, response: StoredResponse) {
        guard ticket.needsStandaloneRecord else { return }
        do {
            try store.complete(ticket.record(for: response))
        } catch {
            logger.error(
                "idempotency record not written",
                metadata: ["error": "\(error)", "idempotency_record": "\(ticket.request.logID)"])
            abandon(ticket)
        }
    }

    /// Gives up a claim without an outcome (the request failed without a response), so a retry can run.
    public func abandon(_ ticket: IdempotencyTicket) {
        try? store.abandon(key: ticket.request.storageKey)
    }
}

/// A claimed `Idempotency-Key`, handed from the idempotency step to the
/// session machinery of the same request (`SessionRequest.idempotency`).
public final class IdempotencyTicket: Sendable {
    /// The keyed request (its scope, storage key and fingerprint).
    public let request: IdempotentRequest
    /// How its record is kept.
    public let policy: IdempotencyPolicy
    private let recorded = Atomic<Bool>(false)
    private let overtaken = Atomic<Bool>(false)

    public init(request: IdempotentRequest, policy: IdempotencyPolicy) {
        self.request = request
        self.policy = policy
    }

    /// Whether the record was written with the session changes.
    public var isRecorded: Bool { recorded.load(ordering: .relaxed) }

    /// Notes that the record was written with the session changes.
    public func markRecorded() { recorded.store(true, ordering: .relaxed) }

    /// Whether another run of the request completed the key first, so this run's session
    /// changes were refused: answer with `IdempotencyGate.overtakingResponse(for:)`.
    public var isOvertaken: Bool { overtaken.load(ordering: .relaxed) }

    /// Notes that the store refused this run's changes (`idempotencyKeyCompleted`).
    public func markOvertaken() { overtaken.store(true, ordering: .relaxed) }

    /// Whether the response still needs a record of its own (`IdempotencyGate.finish`):
    /// neither written with session changes nor overtaken.
    public var needsStandaloneRecord: Bool { !isRecorded && !isOvertaken }

    /// The record of a response, as the policy keeps it (anonymous: no `Set-Cookie`; size-capped).
    public func record(for response: StoredResponse) -> IdempotencyRecord {
        request.record(for: response, policy: policy)
    }
}
