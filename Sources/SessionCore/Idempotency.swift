#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A response kept for an `Idempotency-Key`, replayed to retries of the request.
public struct StoredResponse: Sendable, Equatable, Codable {
    public var status: Int
    public var headers: [[String]]
    public var body: [UInt8]

    public init(status: Int, headers: [[String]], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The stored form: JSON, so `redis-cli` shows it.
    public func encoded() -> [UInt8] {
        (try? Array(JSONEncoder().encode(self))) ?? []
    }

    public static func decode(_ bytes: [UInt8]) -> StoredResponse? {
        try? JSONDecoder().decode(StoredResponse.self, from: Data(bytes))
    }
}

/// The completed record of an idempotent request, written by the store in
/// the same atomic step as the session delta the request produced.
public struct IdempotencyRecord: Sendable, Equatable {
    public var key: String
    /// Identifies the request (method, target, body): a key reused for another request is refused.
    public var fingerprint: String
    public var response: StoredResponse
    public var ttlMillis: Int64

    public init(key: String, fingerprint: String, response: StoredResponse, ttlMillis: Int64) {
        self.key = key
        self.fingerprint = fingerprint
        self.response = response
        self.ttlMillis = ttlMillis
    }
}

/// What `IdempotencyStore.begin` found.
public enum IdempotencyClaim: Sendable, Equatable {
    /// This request owns the key now: run it.
    case claimed
    /// Another request with this key is running.
    case inProgress
    /// The key completed before: replay this response.
    case completed(StoredResponse)
    /// The key was used for a different request.
    case mismatch
}

/// Keeps `Idempotency-Key` → outcome, next to the sessions (a store that
/// supports it also writes `SessionDelta.idempotencyRecord` atomically).
///
/// The first completed outcome of a key wins: `complete` never replaces it,
/// and `SessionStore.apply` refuses a delta whose record's key has one
/// (`idempotencyKeyCompleted`), so a run whose claim was taken over changes nothing.
public protocol IdempotencyStore: Sendable {
    /// Claims `key` for a request with `fingerprint` (in progress for at most `inProgressMillis`).
    func begin(key: String, fingerprint: String, inProgressMillis: Int64) throws -> IdempotencyClaim
    /// Records the outcome of a request that changed no session (kept only if the key has none yet).
    func complete(_ record: IdempotencyRecord) throws
    /// Gives up a claim without an outcome, so a retry can run.
    func abandon(key: String) throws
}
