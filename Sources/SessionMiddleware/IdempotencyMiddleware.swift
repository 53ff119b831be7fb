import Crypto
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
/// Install it in front of `SessionMiddleware`: the session middleware then
/// writes the record in the same atomic step as the session changes the
/// request made, so a node that dies mid-request leaves either both or
/// neither, and a balancer may safely retry the POST on another node.
///
/// - A request with a key that completed before gets its stored response,
///   with `Idempotent-Replayed: true`.
/// - A duplicate that arrives while the first is still running waits up to
///   `waitMillis`, then gets 409.
/// - A key reused for a different request (method, target or body) gets 422.
/// - A request that fails without a response (an error was thrown, the store
///   was down) leaves no record, so it can be retried.
/// - A claim whose node died is taken over by the next retry as soon as the
///   store can tell (Redis: the claiming connection is gone; memory and
///   replicated stores: claims die with their node), else after
///   `inProgressMillis`. Should the first run still finish, the store refuses
///   its session changes once a record exists, and it answers with the
///   recorded response: the session changes apply once.
public struct IdempotencyMiddleware: HTTPMiddleware {
    public let store: any IdempotencyStore
    /// How long a completed response is kept.
    public var recordTTLMillis: Int64
    /// How long a claim lasts if its node dies before completing.
    public var inProgressMillis: Int64
    /// How long a concurrent duplicate waits for the first to finish.
    public var waitMillis: Int
    let logger: Logger

    public init(
        store: any IdempotencyStore, recordTTLMillis: Int64 = 24 * 3_600_000, inProgressMillis: Int64 = 30_000,
        waitMillis: Int = 3_000, logger: Logger
    ) {
        self.store = store
        self.recordTTLMillis = recordTTLMillis
        self.inProgressMillis = inProgressMillis
        self.waitMillis = waitMillis
        self.logger = logger
    }

    public func respond(to request: HTTPRequest, next: (HTTPRequest) throws -> HTTPResponse) throws -> HTTPResponse {
        guard let key = request.headers["Idempotency-Key"], !["GET", "HEAD", "OPTIONS"].contains(request.method) else {
            return try next(request)
        }
        guard (1...255).contains(key.utf8.count), key.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw HTTPError(
                status: 400, code: "invalid_idempotency_key",
                message: "Idempotency-Key must be 1 to 255 visible ASCII characters")
        }
        let fingerprint = Self.fingerprint(request)
        var overtaken = false
        while true {
            if let stored = try claim(key: key, fingerprint: fingerprint) {
                var response = HTTPResponse(
                    status: stored.status, headers: HTTPHeaders(stored.headers.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }),
                    body: stored.body)
                response.headers.replaceOrAdd(name: "Idempotent-Replayed", value: "true")
                return response
            }
            let context = IdempotencyContext(key: key, fingerprint: fingerprint, ttlMillis: recordTTLMillis)
            var request = request
            request.storage[IdempotencyContext.Key.self] = context
            let response: HTTPResponse
            do {
                response = try next(request)
            } catch where context.isOvertaken && !overtaken {
                // A retry took over this claim (its node thought this one dead) and finished
                // first; nothing of this run was written. Answer with that run's response.
                overtaken = true
                logger.notice("another run of this request completed first", metadata: ["idempotency_key": "\(key)"])
                continue
            } catch {
                try? store.abandon(key: key)
                throw error
            }
            if !context.isRecorded {
                // The request changed no session: its record stands alone.
                do {
                    try store.complete(context.record(for: response))
                } catch {
                    logger.error("idempotency record not written", metadata: ["error": "\(error)"])
                    try? store.abandon(key: key)
                }
            }
            return response
        }
    }

    /// Claims `key`: nil when this request may run now, or the stored
    /// response of an earlier run. Waits up to `waitMillis` for a run in progress.
    private func claim(key: String, fingerprint: String) throws -> StoredResponse? {
        var waited = 0
        while true {
            let claim: IdempotencyClaim
            do {
                claim = try store.begin(key: key, fingerprint: fingerprint, inProgressMillis: inProgressMillis)
            } catch let error as SessionStoreError {
                throw SessionMiddleware.httpError(for: error)
            }
            switch claim {
            case .claimed:
                return nil
            case .completed(let stored):
                return stored
            case .mismatch:
                throw HTTPError(
                    status: 422, code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used for a different request")
            case .inProgress:
                guard waited < waitMillis else {
                    throw HTTPError(
                        status: 409, code: "idempotency_key_in_progress",
                        message: "a request with this Idempotency-Key is still running", headers: ["Retry-After": "1"])
                }
                usleep(25_000)
                waited += 25
            }
        }
    }

    /// SHA-256 of method, target and body.
    static func fingerprint(_ request: HTTPRequest) -> String {
        var hasher = SHA256()
        hasher.update(data: Array("\(request.method) \(request.head.target)\n".utf8))
        hasher.update(data: request.body)
        return hasher.finalize().map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// Handed from `IdempotencyMiddleware` to `SessionMiddleware` through the request.
final class IdempotencyContext: Sendable {
    enum Key: RequestStorageKey { typealias Value = IdempotencyContext }

    let key: String
    let fingerprint: String
    let ttlMillis: Int64
    private let recorded = Atomic<Bool>(false)
    private let overtaken = Atomic<Bool>(false)

    init(key: String, fingerprint: String, ttlMillis: Int64) {
        self.key = key
        self.fingerprint = fingerprint
        self.ttlMillis = ttlMillis
    }

    var isRecorded: Bool { recorded.load(ordering: .relaxed) }
    func markRecorded() { recorded.store(true, ordering: .relaxed) }
    /// The store refused this run's changes: another run completed the key first.
    var isOvertaken: Bool { overtaken.load(ordering: .relaxed) }
    func markOvertaken() { overtaken.store(true, ordering: .relaxed) }

    func record(for response: HTTPResponse) -> IdempotencyRecord {
        IdempotencyRecord(
            key: key, fingerprint: fingerprint,
            response: StoredResponse(
                status: response.status, headers: response.headers.map { [$0.name, $0.value] }, body: response.body),
            ttlMillis: ttlMillis)
    }
}
