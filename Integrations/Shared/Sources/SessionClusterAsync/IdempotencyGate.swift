import Crypto
import Logging
import SessionCore
import Synchronization

/// `Idempotency-Key` handling for async frameworks, with the semantics of
/// the core's `IdempotencyMiddleware`: a retried POST is answered from the
/// stored response (`Idempotent-Replayed: true`) instead of running twice; a
/// duplicate that arrives while the first runs waits, then gets 409; a key
/// reused for a different request gets 422. Combined with the session
/// machinery (`SessionRequestManager`), the record is written in the same
/// atomic step as the request's session changes.
public struct IdempotencyGate: Sendable {
    /// Where claims and records live (the session store).
    public let store: any IdempotencyStore
    /// Where the blocking store calls run.
    public let executor: BlockingExecutor
    /// How long a completed response is kept.
    public var recordTTLMillis: Int64
    /// How long a claim lasts if its node dies before completing.
    public var inProgressMillis: Int64
    /// How long a concurrent duplicate waits for the first to finish.
    public var waitMillis: Int
    let logger: Logger

    /// A gate over `store` (usually the session store itself).
    public init(
        store: any IdempotencyStore, executor: BlockingExecutor = .shared, recordTTLMillis: Int64 = 24 * 3_600_000,
        inProgressMillis: Int64 = 30_000, waitMillis: Int = 3_000, logger: Logger
    ) {
        self.store = store
        self.executor = executor
        self.recordTTLMillis = recordTTLMillis
        self.inProgressMillis = inProgressMillis
        self.waitMillis = waitMillis
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
    /// OPTIONS, run as they are. Throws a `SessionErrorResponse` for 400
    /// (malformed key), 409 (still running elsewhere), 422 (key reused) and
    /// 503 (store down).
    public func begin(key: String?, method: String, target: String, body: [UInt8]) async throws -> Decision {
        guard let key, !["GET", "HEAD", "OPTIONS"].contains(method) else { return .run(nil) }
        guard (1...255).contains(key.utf8.count), key.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw SessionErrorResponse(
                status: 400, code: "invalid_idempotency_key",
                message: "Idempotency-Key must be 1 to 255 visible ASCII characters")
        }
        let fingerprint = Self.fingerprint(method: method, target: target, body: body)
        let store = store
        let inProgressMillis = inProgressMillis
        var waited = 0
        while true {
            let claim: IdempotencyClaim
            do {
                claim = try await executor.run {
                    try store.begin(key: key, fingerprint: fingerprint, inProgressMillis: inProgressMillis)
                }
            } catch {
                throw SessionErrorResponse.from(error) ?? error
            }
            switch claim {
            case .claimed:
                return .run(IdempotencyTicket(key: key, fingerprint: fingerprint, ttlMillis: recordTTLMillis))
            case .completed(var stored):
                stored.headers.removeAll { $0.first?.lowercased() == "idempotent-replayed" }
                stored.headers.append(["Idempotent-Replayed", "true"])
                return .replay(stored)
            case .mismatch:
                throw SessionErrorResponse(
                    status: 422, code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used for a different request")
            case .inProgress:
                guard waited < waitMillis else {
                    throw SessionErrorResponse(
                        status: 409, code: "idempotency_key_in_progress",
                        message: "a request with this Idempotency-Key is still running", headers: [("Retry-After", "1")])
                }
                try await Task.sleep(for: .milliseconds(25))  // parks the task, not a thread
                waited += 25
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
            logger.error("idempotency record not written", metadata: ["error": "\(error)"])
            await abandon(ticket)
        }
    }

    /// The recorded response of a run that overtook `ticket`'s (see
    /// `IdempotencyTicket.isOvertaken`), or nil when there is none to replay.
    public func overtakingResponse(
        for ticket: IdempotencyTicket, method: String, target: String, body: [UInt8]
    ) async -> StoredResponse? {
        guard ticket.isOvertaken else { return nil }
        switch try? await begin(key: ticket.key, method: method, target: target, body: body) {
        case .replay(let stored)?:
            logger.notice("another run of this request completed first", metadata: ["idempotency_key": "\(ticket.key)"])
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
        let key = ticket.key
        _ = try? await executor.run { try store.abandon(key: key) }
    }

    /// SHA-256 of method, target and body, as the core's middleware computes it.
    public static func fingerprint(method: String, target: String, body: [UInt8]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array("\(method) \(target)\n".utf8))
        hasher.update(data: body)
        return hasher.finalize().map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// A claimed `Idempotency-Key`, handed from the idempotency middleware to
/// the session middleware of the same request.
public final class IdempotencyTicket: Sendable {
    /// The key.
    public let key: String
    /// Identifies the request (method, target, body).
    public let fingerprint: String
    /// How long the record is kept.
    public let ttlMillis: Int64
    private let recorded = Atomic<Bool>(false)
    private let overtaken = Atomic<Bool>(false)

    /// A ticket for a claimed key.
    public init(key: String, fingerprint: String, ttlMillis: Int64) {
        self.key = key
        self.fingerprint = fingerprint
        self.ttlMillis = ttlMillis
    }

    /// Whether the record was written with the session changes.
    public var isRecorded: Bool { recorded.load(ordering: .relaxed) }

    /// Notes that the record was written with the session changes.
    public func markRecorded() { recorded.store(true, ordering: .relaxed) }

    /// Whether another run of the request completed the key first, so this
    /// run's session changes were refused: answer with `IdempotencyGate.begin`'s replay.
    public var isOvertaken: Bool { overtaken.load(ordering: .relaxed) }

    /// Notes that the store refused this run's changes (`idempotencyKeyCompleted`).
    public func markOvertaken() { overtaken.store(true, ordering: .relaxed) }

    /// The record of a response.
    public func record(for response: StoredResponse) -> IdempotencyRecord {
        IdempotencyRecord(key: key, fingerprint: fingerprint, response: response, ttlMillis: ttlMillis)
    }
}
