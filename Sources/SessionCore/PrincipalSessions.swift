import Crypto
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SystemSupport

/// A session's owner and how it was logged in: what a store indexes sessions by.
///
/// The principal is the user name the application logs in with. A logged-in
/// session carries it in the reserved attribute `sessioncluster.principal`,
/// and the client description in `sessioncluster.client`; `Session.set`
/// refuses names under `sessioncluster.`, so only `Session.logIn` changes them.
public enum SessionPrincipal {
    /// The attribute holding the principal (a JSON string).
    public static let attribute = "sessioncluster.principal"
    /// The attribute holding the client description (a JSON string).
    public static let clientAttribute = "sessioncluster.client"
    /// Attribute names under this prefix belong to the session machinery.
    public static let reservedPrefix = "sessioncluster."

    /// The longest principal, in UTF-8 bytes.
    public static let maxPrincipalBytes = 256
    /// The longest client description, in UTF-8 bytes (a longer one is cut).
    public static let maxClientBytes = 160

    /// Checks a principal: 1 to 256 bytes of UTF-8 without control characters.
    public static func validate(_ principal: String) throws(SessionStoreError) {
        guard !principal.isEmpty, principal.utf8.count <= maxPrincipalBytes else {
            throw SessionStoreError(.invalidValue, "a principal is 1 to \(maxPrincipalBytes) bytes")
        }
        guard !principal.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw SessionStoreError(.invalidValue, "a principal may not contain control characters")
        }
    }

    /// A client description made safe to store and show: control characters
    /// dropped, cut to `maxClientBytes` on a character boundary.
    public static func sanitizedClient(_ client: String) -> String {
        var out = ""
        for character in client where !character.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            if out.utf8.count + String(character).utf8.count > maxClientBytes { break }
            out.append(character)
        }
        return out
    }

    /// The slot tag of every session `principal` logs in to (`SessionID.slotTag`):
    /// the first three base64url characters of SHA-256 of the name. A sharded
    /// store keeps all of one principal's sessions, and their index, in one slot,
    /// so a login under a session limit is one atomic step there.
    public static func slotTag(of principal: String) -> String {
        String(base64URLEncode(Array(SHA256.hash(data: Array(principal.utf8)))).prefix(SessionID.slotTagLength))
    }

    /// The JSON bytes of a principal or client attribute, as every store writes them.
    public static func json(_ text: String) -> [UInt8] { Array(jsonQuoted(text).utf8) }
}

/// An opaque name for one session, safe to show to its user and to put in a
/// URL: the first 128 bits of SHA-256 over the session ID, base64url (22
/// characters). It names the session without being a credential — nobody
/// can turn a handle back into the ID the cookie carries.
public struct SessionHandle: Hashable, Sendable, CustomStringConvertible {
    /// The 22-character text form.
    public let rawValue: String

    /// Accepts only the shape handles have (22 base64url characters).
    public init?(rawValue: String) {
        guard rawValue.utf8.count == 22, rawValue.utf8.allSatisfy(isBase64URLByte) else { return nil }
        self.rawValue = rawValue
    }

    /// The handle of a session.
    public init(of id: SessionID) {
        let digest = SHA256.hash(data: Array(("sessioncluster-handle:" + id.rawValue).utf8))
        rawValue = base64URLEncode(Array(Array(digest).prefix(16)))
    }

    public var description: String { rawValue }
}

/// How many sessions one principal may hold, and what a login past that does.
public struct PrincipalSessionLimit: Sendable, Equatable {
    /// What a login does when the principal already holds `maxSessions`.
    public enum WhenExceeded: String, Sendable, Equatable, CaseIterable {
        /// The least recently used sessions are invalidated to make room.
        case invalidateLeastRecentlyUsed
        /// The login fails with `principalLimitReached` (409) and nothing changes.
        case refuseNewLogin
    }

    /// What the command-line option `--when-exceeded` names: `evict-oldest` or `refuse`.
    public static func whenExceeded(optionName: String) -> WhenExceeded? {
        switch optionName {
        case "evict-oldest": .invalidateLeastRecentlyUsed
        case "refuse": .refuseNewLogin
        default: nil
        }
    }

    /// The limit of the options `--max-sessions-per-user` (nil: none; 1...10,000) and
    /// `--when-exceeded`; throws a message naming the option that is wrong.
    public static func fromOptions(maxSessionsPerUser: Int?, whenExceeded name: String) throws(SessionStoreError)
        -> PrincipalSessionLimit?
    {
        guard let whenExceeded = whenExceeded(optionName: name) else {
            throw SessionStoreError(.invalidValue, "--when-exceeded must be evict-oldest or refuse, not '\(name)'")
        }
        guard let maxSessionsPerUser else { return nil }
        guard (1...10_000).contains(maxSessionsPerUser) else {
            throw SessionStoreError(.invalidValue, "--max-sessions-per-user must be 1...10000")
        }
        return PrincipalSessionLimit(maxSessions: maxSessionsPerUser, whenExceeded: whenExceeded)
    }

    /// The sessions a login must end to stay within the limit, given the principal's other live
    /// sessions: none while there is room; else the least recently used (ties by ID), or, under
    /// `refuseNewLogin`, `principalLimitReached`. Stores whose index lives in this process call it;
    /// Redis does the same in its login script.
    public func victims<Entry>(
        among others: [Entry], lastAccess: (Entry) -> Int64, id: (Entry) -> SessionID
    ) throws(SessionStoreError) -> [SessionID] {
        let excess = others.count + 1 - maxSessions
        guard excess > 0 else { return [] }
        if whenExceeded == .refuseNewLogin { throw .principalLimitReached(self) }
        return others.map { (lastAccess($0), id($0)) }.sorted { ($0.0, $0.1.rawValue) < ($1.0, $1.1.rawValue) }
            .prefix(excess).map(\.1)
    }

    /// At least 1.
    public var maxSessions: Int
    public var whenExceeded: WhenExceeded

    public init(maxSessions: Int, whenExceeded: WhenExceeded = .invalidateLeastRecentlyUsed) {
        precondition(maxSessions >= 1, "maxSessionsPerPrincipal must be at least 1")
        self.maxSessions = maxSessions
        self.whenExceeded = whenExceeded
    }
}

/// One session of a principal, as a store lists it (with its ID: stores deal
/// in IDs; what an application shows its user is `PrincipalSessionInfo`).
public struct PrincipalSessionEntry: Sendable, Equatable {
    public var id: SessionID
    public var createdAtMillis: Int64
    public var lastAccessedAtMillis: Int64
    /// The node that last wrote or touched the session, when the store records it.
    public var node: String?
    /// The client description given at login.
    public var client: String?

    public init(id: SessionID, createdAtMillis: Int64, lastAccessedAtMillis: Int64, node: String?, client: String?) {
        self.id = id
        self.createdAtMillis = createdAtMillis
        self.lastAccessedAtMillis = lastAccessedAtMillis
        self.node = node
        self.client = client
    }
}

/// One session of a principal as its user may see it: a handle, never the ID.
public struct PrincipalSessionInfo: Sendable, Equatable {
    public var handle: SessionHandle
    public var createdAtMillis: Int64
    public var lastAccessedAtMillis: Int64
    public var node: String?
    public var client: String?
    /// Whether this is the session of the request that asked.
    public var current: Bool

    public init(_ entry: PrincipalSessionEntry, current: Bool) {
        handle = SessionHandle(of: entry.id)
        createdAtMillis = entry.createdAtMillis
        lastAccessedAtMillis = entry.lastAccessedAtMillis
        node = entry.node
        client = entry.client
        self.current = current
    }
}

/// A login or logout for `PrincipalIndexedStore.changePrincipal`.
public struct PrincipalChange: Sendable, Equatable {
    /// The session as it is now, when it exists in the store (nil: a client without one).
    public var id: SessionID?
    /// The ID it gets (login and logout both regenerate it, against session fixation).
    /// For a login it must carry `SessionPrincipal.slotTag(of:)` of the principal.
    public var newID: SessionID
    /// The principal to set; nil clears it (logout without ending the session).
    public var principal: String?
    /// A short client description (e.g. from `User-Agent`), sanitized.
    public var client: String?

    public init(id: SessionID?, newID: SessionID, principal: String?, client: String? = nil) {
        self.id = id
        self.newID = newID
        self.principal = principal
        self.client = client.map(SessionPrincipal.sanitizedClient)
    }
}

/// What a login did.
public struct PrincipalChangeResult: Sendable, Equatable {
    /// Sessions of the principal invalidated to stay within the limit.
    public var evicted: [SessionID]
    public init(evicted: [SessionID]) { self.evicted = evicted }
}

/// A store that indexes sessions by principal: "your devices", "log out
/// everywhere", and a cap on sessions per user (Spring Session's
/// `FindByIndexNameSessionRepository`, without its cleanup job).
///
/// Every store keeps the index in the same atomic step as the sessions it
/// names: a listing never shows an expired or invalidated session, and no
/// index entry outlives its session for longer than the store's expiry.
public protocol PrincipalIndexedStore: SessionStore {
    /// The cap on sessions per principal, nil for none.
    var principalLimit: PrincipalSessionLimit? { get }

    /// Moves session `change.id` (or, when nil or gone, a new empty session) to
    /// `change.newID` and sets or clears its principal, in one atomic step with
    /// the index and the limit. Throws `principalLimitReached` under
    /// `refuseNewLogin` (nothing changed).
    func changePrincipal(_ change: PrincipalChange) throws -> PrincipalChangeResult

    /// The live sessions of `principal`, oldest first.
    func sessions(ofPrincipal principal: String) throws -> [PrincipalSessionEntry]
}

extension PrincipalIndexedStore {
    /// Invalidates the session of `principal` that `handle` names; false when
    /// none of its sessions has that handle (another user's handle included).
    public func invalidate(_ handle: SessionHandle, ofPrincipal principal: String) throws -> Bool {
        guard let entry = try sessions(ofPrincipal: principal).first(where: { SessionHandle(of: $0.id) == handle }) else {
            return false
        }
        try invalidate(entry.id)
        return true
    }

    /// Invalidates every session of `principal` but `kept`; returns how many.
    @discardableResult
    public func invalidateSessions(ofPrincipal principal: String, except kept: SessionID? = nil) throws -> Int {
        var count = 0
        for entry in try sessions(ofPrincipal: principal) where entry.id != kept {
            try invalidate(entry.id)
            count += 1
        }
        return count
    }
}

extension SessionStoreError {
    /// `principalLimitReached` for a principal at `limit`.
    public static func principalLimitReached(_ limit: PrincipalSessionLimit) -> SessionStoreError {
        SessionStoreError(
            .principalLimitReached,
            "this user already has \(limit.maxSessions) session\(limit.maxSessions == 1 ? "" : "s"); log out on another device first")
    }
}

extension SessionDelta {
    /// Throws `invalidValue` when the delta changes the principal or client
    /// attribute: only `PrincipalIndexedStore.changePrincipal` does, with the index.
    public func checkPrincipalUntouched() throws(SessionStoreError) {
        for change in changes
        where change.attribute == SessionPrincipal.attribute || change.attribute == SessionPrincipal.clientAttribute {
            throw SessionStoreError(
                .invalidValue, "'\(change.attribute)' changes only through a login or logout (Session.logIn, Session.logOut)")
        }
    }
}

/// The string a JSON string attribute holds, or nil.
public func decodeJSONString(_ bytes: [UInt8]) -> String? {
    try? JSONDecoder().decode(String.self, from: Data(bytes))
}
