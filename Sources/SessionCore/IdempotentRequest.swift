import Crypto
import SystemSupport

/// Whose idempotency records a request may see.
///
/// A record is a stored response, and a response can carry a session cookie:
/// records are therefore never global. A request with a (verified) session
/// cookie sees only the records made under that session ID; a request
/// without one sees only records made without one, and those never carry a
/// `Set-Cookie` (see `IdempotencyPolicy.storedResponse`).
public enum IdempotencyScope: Sendable, Hashable {
    /// The request carried this verified session ID (whether or not the store still has the session).
    case session(SessionID)
    /// The request carried no session cookie, or one that failed verification.
    case anonymous

    /// The prefix of storage keys of anonymous records (stores cap them apart).
    public static let anonymousKeyPrefix = "a:"
    /// The prefix of storage keys of session-scoped records.
    public static let sessionKeyPrefix = "s:"

    /// Whether `storageKey` belongs to a record made without a session.
    public static func isAnonymous(storageKey: String) -> Bool { storageKey.hasPrefix(anonymousKeyPrefix) }

    /// The slot tag of a storage key (`SessionID.slotTag`): the three
    /// characters after the prefix — the session's tag for a session's
    /// record, the digest's own first characters for an anonymous one. A
    /// session the request creates gets an ID with this tag, so a sharded
    /// store keeps the session and the record in one slot. nil for a key of
    /// another shape.
    public static func slotTag(ofStorageKey storageKey: String) -> String? {
        let utf8 = storageKey.utf8
        guard utf8.count >= 2 + SessionID.slotTagLength,
            storageKey.hasPrefix(sessionKeyPrefix) || storageKey.hasPrefix(anonymousKeyPrefix)
        else { return nil }
        let tag = String(storageKey.dropFirst(2).prefix(SessionID.slotTagLength))
        return SessionID.isSlotTag(tag) ? tag : nil
    }
}

/// One request that carries an `Idempotency-Key`, as every transport sees it:
/// the client's key, validated; what identifies the request (method, target,
/// body); and the key under which stores keep its claim and record, bound to
/// the caller's scope.
///
/// - A session's storage key is a hash of the session ID and the key: no
///   other client can name it, so no other client can replay, probe (409,
///   422) or pre-empt it.
/// - An anonymous storage key is a hash of the key and the fingerprint: a key
///   reused with another body is another record (no 422 across clients), and
///   its response carries no cookie.
public struct IdempotentRequest: Sendable, Equatable {
    /// The client's `Idempotency-Key`.
    public let key: String
    /// SHA-256 of method, target and body, hex.
    public let fingerprint: String
    /// Whose records this request sees.
    public let scope: IdempotencyScope
    /// The key stores keep the claim and the record under.
    public let storageKey: String

    /// The slot tag a session this request creates gets (see `IdempotencyScope.slotTag(ofStorageKey:)`).
    public var slotTag: String? { IdempotencyScope.slotTag(ofStorageKey: storageKey) }

    /// The longest accepted key.
    public static let maxKeyBytes = 255

    /// Validates `key` (1 to 255 visible ASCII characters) and binds it to `scope`.
    public init(key: String, method: String, target: String, body: [UInt8], scope: IdempotencyScope)
        throws(IdempotencyRefusal)
    {
        guard (1...Self.maxKeyBytes).contains(key.utf8.count), key.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw IdempotencyRefusal(
                status: 400, code: "invalid_idempotency_key",
                message: "Idempotency-Key must be 1 to \(Self.maxKeyBytes) visible ASCII characters")
        }
        self.key = key
        self.scope = scope
        fingerprint = Self.fingerprint(method: method, target: target, body: body)
        switch scope {
        case .session(let id):
            storageKey = IdempotencyScope.sessionKeyPrefix + id.slotTag + Self.digest(["session", id.rawValue, key])
        case .anonymous:
            // The digest's first three characters are its slot tag.
            storageKey = IdempotencyScope.anonymousKeyPrefix + Self.digest(["anonymous", key, fingerprint])
        }
    }

    /// Whether a request with this method may carry an `Idempotency-Key` (GET, HEAD and OPTIONS are safe already).
    public static func appliesTo(method: String) -> Bool { !["GET", "HEAD", "OPTIONS"].contains(method) }

    /// SHA-256 of method, target and body, hex.
    public static func fingerprint(method: String, target: String, body: [UInt8]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array("\(method) \(target)\n".utf8))
        hasher.update(data: body)
        return hex(hasher.finalize())
    }

    /// A short hash of the storage key, for logs: correlates log lines
    /// without writing the client's key (or anything that finds its record).
    public var logID: String { Self.logID(storageKey: storageKey) }

    /// `logID` of a storage key (for stores, which see only those).
    public static func logID(storageKey: String) -> String {
        String(hex(SHA256.hash(data: Array(storageKey.utf8))).prefix(12))
    }

    /// What to do after the store answered `begin` with `claim`, having
    /// waited `waitedMillis` so far for a run in progress.
    public func next(after claim: IdempotencyClaim, waitedMillis: Int, policy: IdempotencyPolicy) throws(IdempotencyRefusal)
        -> IdempotencyStep
    {
        switch claim {
        case .claimed:
            return .run
        case .completed(let stored):
            if let omitted = stored.omitted {
                throw IdempotencyRefusal(
                    status: 409, code: "idempotency_response_not_kept",
                    message:
                        "the request with this Idempotency-Key completed with status \(omitted.status) and was not run again; its response of \(omitted.bytes) bytes exceeded the \(policy.maxStoredResponseBytes)-byte limit for kept responses")
            }
            var replay = stored
            replay.headers.removeAll { $0.first?.lowercased() == "idempotent-replayed" }
            replay.headers.append(["Idempotent-Replayed", "true"])
            return .replay(replay)
        case .mismatch:
            throw IdempotencyRefusal(
                status: 422, code: "idempotency_key_reused",
                message: "this Idempotency-Key was used for a different request")
        case .inProgress:
            guard waitedMillis < policy.waitMillis else {
                throw IdempotencyRefusal(
                    status: 409, code: "idempotency_key_in_progress",
                    message: "a request with this Idempotency-Key is still running", retryAfterSeconds: 1)
            }
            return .wait(millis: IdempotencyPolicy.pollMillis)
        }
    }

    /// The record of this request's `response`, as `policy` keeps it.
    public func record(for response: StoredResponse, policy: IdempotencyPolicy) -> IdempotencyRecord {
        IdempotencyRecord(
            key: storageKey, fingerprint: fingerprint, response: policy.storedResponse(response, scope: scope),
            ttlMillis: scope == .anonymous ? policy.anonymousRecordTTLMillis : policy.recordTTLMillis)
    }

    private static func digest(_ parts: [String]) -> String {
        var hasher = SHA256()
        for part in parts {
            hasher.update(data: Array(part.utf8))
            hasher.update(data: [0])
        }
        return base64URLEncode(Array(hasher.finalize()))
    }

    private static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// What the idempotency machinery does next with a request.
public enum IdempotencyStep: Sendable, Equatable {
    /// This request owns the key: run it.
    case run
    /// Answer with this stored response (marked `Idempotent-Replayed: true`).
    case replay(StoredResponse)
    /// A run with the key is in progress: wait this long, then ask the store again.
    case wait(millis: Int)
}

/// An answer the idempotency machinery gives instead of running a request
/// (400, 409, 422): the session machinery's error answer, which every
/// transport renders as its JSON error.
public typealias IdempotencyRefusal = SessionErrorAnswer

/// How idempotency records are kept: for how long, and how large.
public struct IdempotencyPolicy: Sendable, Equatable {
    /// How long a session's completed response is kept.
    public var recordTTLMillis: Int64
    /// How long a response made without a session is kept: short, since
    /// anyone can make such records (a retry comes within seconds).
    public var anonymousRecordTTLMillis: Int64
    /// How long a claim lasts if its node dies before completing.
    public var inProgressMillis: Int64
    /// How long a concurrent duplicate waits for the first to finish.
    public var waitMillis: Int
    /// A response larger than this (body and headers) is not kept: the
    /// record only says that the request completed, and a retry gets 409
    /// `idempotency_response_not_kept` instead of running again.
    public var maxStoredResponseBytes: Int

    /// How often a waiting duplicate asks the store again.
    public static let pollMillis = 25

    public init(
        recordTTLMillis: Int64 = 24 * 3_600_000, anonymousRecordTTLMillis: Int64 = 5 * 60_000,
        inProgressMillis: Int64 = 30_000, waitMillis: Int = 3_000, maxStoredResponseBytes: Int = 64 * 1024
    ) {
        self.recordTTLMillis = recordTTLMillis
        self.anonymousRecordTTLMillis = anonymousRecordTTLMillis
        self.inProgressMillis = inProgressMillis
        self.waitMillis = waitMillis
        self.maxStoredResponseBytes = maxStoredResponseBytes
    }

    /// `response` as a record keeps it: without any `Set-Cookie` when made
    /// without a session (another client may send the same key and body);
    /// reduced to a marker (status, size) when over `maxStoredResponseBytes`.
    public func storedResponse(_ response: StoredResponse, scope: IdempotencyScope) -> StoredResponse {
        var kept = response
        if scope == .anonymous { kept.headers.removeAll { $0.first?.lowercased() == "set-cookie" } }
        return kept.capped(maxBytes: maxStoredResponseBytes)
    }
}

extension StoredResponse {
    /// Body and header bytes.
    public var byteCount: Int { body.count + headers.reduce(0) { $0 + $1.reduce(0) { $0 + $1.utf8.count } } }

    /// The header that marks a kept record whose response was too large to keep.
    static let omittedHeader = "X-Idempotent-Response-Omitted"

    /// This response, or when over `maxBytes` a stand-in that keeps only its
    /// status and size (a retry is then refused with 409, never run again).
    public func capped(maxBytes: Int) -> StoredResponse {
        let bytes = byteCount
        guard bytes > maxBytes else { return self }
        return StoredResponse(status: status, headers: [[Self.omittedHeader, String(bytes)]], body: [])
    }

    /// The original status and size of a response kept only as a stand-in (`capped`), or nil.
    public var omitted: (status: Int, bytes: Int)? {
        guard body.isEmpty, headers.count == 1, headers[0].count == 2, headers[0][0] == Self.omittedHeader,
            let bytes = Int(headers[0][1])
        else { return nil }
        return (status, bytes)
    }
}
