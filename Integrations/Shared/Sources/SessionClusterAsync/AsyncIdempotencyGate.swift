import Logging
import SessionCore

/// `Idempotency-Key` handling for async frameworks: the core's
/// `IdempotencyGate` steps, with every store call on a `BlockingExecutor` and
/// the wait for a run in progress a task's sleep (not a thread's).
///
/// Records are scoped to the caller's verified session (or anonymous, without
/// cookies); a retried POST is answered from the stored response
/// (`Idempotent-Replayed: true`) instead of running twice; a duplicate that
/// arrives while the first runs waits, then gets 409; a key reused by the
/// same session for a different request gets 422. Combined with the session
/// machinery (`SessionRequestManager`), the record is written in the same
/// atomic step as the request's session changes.
public struct AsyncIdempotencyGate: Sendable {
    /// The transport-free steps.
    public let core: IdempotencyGate
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor

    /// A gate over `store` (usually the session store itself), for the
    /// sessions of `sessions` (the session middleware's configuration).
    public init(
        store: any IdempotencyStore, sessions: SessionConfiguration, executor: BlockingExecutor = .shared,
        policy: IdempotencyPolicy = IdempotencyPolicy(), logger: Logger
    ) {
        core = IdempotencyGate(store: store, sessions: sessions, policy: policy, logger: logger)
        self.executor = executor
    }

    /// What to do with a request.
    public enum Decision: Sendable {
        /// Run it; with a ticket when it carries a key (finish or abandon the ticket afterwards).
        case run(IdempotencyTicket?)
        /// Answer with this stored response (its headers include `Idempotent-Replayed: true`).
        case replay(StoredResponse)
    }

    /// Claims the request's key, waiting (a task's sleep) for a run in progress. Requests
    /// without a key, and GET, HEAD and OPTIONS, run as they are. Throws a `SessionErrorAnswer`
    /// for 400, 409, 422 and 503.
    public func begin(
        key: String?, method: String, target: String, body: [UInt8], cookie: (String) -> String?
    ) async throws -> Decision {
        guard let request = try core.keyedRequest(key: key, method: method, target: target, body: body, cookie: cookie)
        else { return .run(nil) }
        let core = core
        var waited = 0
        while true {
            let elapsed = waited
            switch try await executor.run({ try core.claim(request, waitedMillis: elapsed) }) {
            case .run(let ticket): return .run(ticket)
            case .replay(let stored): return .replay(stored)
            case .wait(let millis):
                try await Task.sleep(for: .milliseconds(millis))
                waited += millis
            }
        }
    }

    /// Runs a claimed request (`body`, with `ticket` handed to its session machinery) and
    /// settles the ticket, as `IdempotencyGate.run` does: a run that overtook this one answers
    /// instead (`replay`); a request that changed no session gets its record now (`record` makes
    /// it from the response, which it may update, e.g. to a collected body); one that failed
    /// gives up its claim. Errors of `body` pass through;
    /// a record that cannot be replayed throws its `SessionErrorAnswer` (409).
    public func run<Response>(
        _ ticket: IdempotencyTicket, replay: (StoredResponse) -> Response,
        record: (inout Response) async throws -> StoredResponse, _ body: () async throws -> Response
    ) async throws -> Response {
        var response: Response
        do {
            response = try await body()
        } catch {
            if let stored = try await overtakingResponse(for: ticket) { return replay(stored) }
            if !ticket.isOvertaken { await abandon(ticket) }  // an overtaken run has no claim of its own left
            throw error
        }
        if let stored = try await overtakingResponse(for: ticket) { return replay(stored) }
        if ticket.needsStandaloneRecord { await finish(ticket, response: try await record(&response)) }
        return response
    }

    /// Records the outcome of a request that ran, unless the session machinery already wrote it.
    public func finish(_ ticket: IdempotencyTicket, response: StoredResponse) async {
        let core = core
        try? await executor.run { core.finish(ticket, response: response) }
    }

    /// The recorded response of a run that overtook `ticket`'s, or nil (`IdempotencyGate.overtakingResponse`).
    public func overtakingResponse(for ticket: IdempotencyTicket) async throws(SessionErrorAnswer) -> StoredResponse? {
        guard ticket.isOvertaken else { return nil }
        let core = core
        do {
            return try await executor.run { try core.overtakingResponse(for: ticket) }
        } catch let answer as SessionErrorAnswer {
            throw answer
        } catch {
            return nil
        }
    }

    /// Gives up a claim without an outcome (the request failed without a response), so a retry can run.
    public func abandon(_ ticket: IdempotencyTicket) async {
        let core = core
        try? await executor.run { core.abandon(ticket) }
    }
}
