import Synchronization

/// Something that happened to a session, as a `SessionEventListener` hears it.
public struct SessionEvent: Sendable, Equatable, CustomStringConvertible {
    /// What happened.
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// A new session was stored.
        case created
        /// The session moved to a new ID (`previous` names the old one).
        case regenerated
        /// The session was logged in (`principal`), under a new ID (`previous` names the old one, if any).
        case principalSet
        /// The session was logged out but kept, under a new ID (`previous`).
        case principalCleared
        /// The session was ended by a request (logout, revoke).
        case invalidated
        /// A login ended the session to keep its user within `PrincipalSessionLimit`.
        case evicted
        /// A logged-in session reached its idle or absolute timeout.
        case expired
    }

    public var kind: Kind
    /// The session, by handle (never its ID).
    public var handle: SessionHandle
    /// The handle the session had before, for `regenerated`, `principalSet` and `principalCleared`.
    public var previous: SessionHandle?
    /// The user, when the store knows it (always for `principalSet`, `evicted` and `expired`).
    public var principal: String?
    /// The node whose store delivered the event.
    public var node: String?
    /// When, in ms since 1970 (the delivering node's clock).
    public var atMillis: Int64

    public init(
        kind: Kind, handle: SessionHandle, previous: SessionHandle? = nil, principal: String? = nil, node: String? = nil,
        atMillis: Int64
    ) {
        self.kind = kind
        self.handle = handle
        self.previous = previous
        self.principal = principal
        self.node = node
        self.atMillis = atMillis
    }

    public var description: String {
        "\(kind.rawValue) \(handle)" + (principal.map { " (\($0))" } ?? "") + (node.map { " on \($0)" } ?? "")
    }
}

/// Receives a store's session events. Each event is delivered once per
/// cluster: by the node whose store did the change, and, for `expired`, by
/// the one node that claims it (docs/sessions-by-user.md has the precise
/// guarantee). Called on the thread of the request or sweeper that caused the
/// event, outside the store's locks: return quickly, hand slow work off.
public protocol SessionEventListener: Sendable {
    func sessionEvent(_ event: SessionEvent)
}

/// A listener made of a closure.
public struct SessionEventHandler: SessionEventListener {
    let handle: @Sendable (SessionEvent) -> Void
    public init(_ handle: @escaping @Sendable (SessionEvent) -> Void) { self.handle = handle }
    public func sessionEvent(_ event: SessionEvent) { handle(event) }
}

/// Where a store sends its events: the listener set on it, if any, and the
/// node's name. Stores hold one and call `emit` outside their locks.
public final class SessionEventHub: Sendable {
    private let listener = Mutex<(any SessionEventListener)?>(nil)
    /// The node named in the events.
    public let node: String?

    public init(node: String?) { self.node = node }

    /// The listener, set any time; nil for none.
    public var current: (any SessionEventListener)? {
        get { listener.withLock { $0 } }
        set { listener.withLock { $0 = newValue } }
    }

    /// Whether anyone listens (skip building events otherwise).
    public var isListened: Bool { current != nil }

    /// Delivers an event about session `id`.
    public func emit(
        _ kind: SessionEvent.Kind, _ id: SessionID, previous: SessionID? = nil, principal: String? = nil, atMillis: Int64
    ) {
        emit([PendingEvent(kind: kind, id: id, previous: previous, principal: principal)], atMillis: atMillis)
    }
}

/// A store that delivers session events (`SessionEventListener`).
public protocol SessionEventSource {
    /// Where the store's events go; set its `current` listener.
    var events: SessionEventHub { get }
}

/// An event recorded under a store's lock, delivered after it (`SessionEventHub.emit`). Its
/// handle is computed at delivery, so nobody pays for it while nobody listens.
public struct PendingEvent: Sendable {
    public var kind: SessionEvent.Kind
    /// The session, when known by ID (else `knownHandle`).
    public var id: SessionID?
    /// The session's handle, when known only by handle.
    public var knownHandle: SessionHandle?
    public var previous: SessionID?
    public var principal: String?

    public init(kind: SessionEvent.Kind, id: SessionID, previous: SessionID? = nil, principal: String? = nil) {
        self.kind = kind
        self.id = id
        self.previous = previous
        self.principal = principal
    }

    public init(kind: SessionEvent.Kind, handle: SessionHandle, principal: String? = nil) {
        self.kind = kind
        knownHandle = handle
        self.principal = principal
    }

    /// The session's handle.
    public var handle: SessionHandle { knownHandle ?? SessionHandle(of: id!) }
}

extension SessionEventHub {
    /// Delivers events recorded under a lock, stamped `atMillis`.
    public func emit(_ events: [PendingEvent], atMillis: Int64) {
        guard !events.isEmpty, let listener = current else { return }
        for event in events {
            listener.sessionEvent(
                SessionEvent(
                    kind: event.kind, handle: event.handle, previous: event.previous.map(SessionHandle.init(of:)),
                    principal: event.principal, node: node, atMillis: atMillis))
        }
    }
}
