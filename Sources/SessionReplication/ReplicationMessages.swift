import SessionCore

/// One thing a node replicates: a session's (partial or full) state, or an
/// idempotency record completed without a session change.
package enum ReplicationItem: Sendable, Equatable {
    case session(SessionUpdate)
    case record(ReplicatedRecord)

    /// Writes a kind byte (1 session, 2 record), then the item.
    public func encode(into w: inout WireWriter) {
        switch self {
        case .session(let update):
            w.u8(1)
            update.encode(into: &w)
        case .record(let record):
            w.u8(2)
            record.encode(into: &w)
        }
    }

    public init(from r: inout WireReader) throws(WireError) {
        switch try r.u8() {
        case 1: self = .session(try SessionUpdate(from: &r))
        case 2: self = .record(try ReplicatedRecord(from: &r))
        case let kind: throw WireError("unknown item kind \(kind)")
        }
    }

    /// The item's wire bytes, encoded once and shared by every peer's queue.
    public var encoded: [UInt8] {
        var w = WireWriter()
        encode(into: &w)
        return w.bytes
    }
}

/// The payload of `update` and `snapshotChunk` frames: a sequence number
/// (for acknowledgements; 0 in state transfers) and items.
///
/// Wire form: sequence (u64), item count (u32), the items back to back.
package struct UpdateBatch: Sendable, Equatable {
    /// The most items one batch may carry.
    public static let maxItems = 1 << 20

    public var sequence: UInt64
    public var items: [ReplicationItem]

    public init(sequence: UInt64, items: [ReplicationItem]) {
        self.sequence = sequence
        self.items = items
    }

    public func encode() -> [UInt8] {
        Self.encode(sequence: sequence, itemCount: items.count, encodedItems: items.flatMap(\.encoded))
    }

    /// A batch from items already encoded (`ReplicationItem.encoded`, concatenated).
    public static func encode(sequence: UInt64, itemCount: Int, encodedItems: [UInt8]) -> [UInt8] {
        var w = WireWriter()
        w.u64(sequence)
        w.u32(UInt32(itemCount))
        var bytes = w.bytes
        bytes.append(contentsOf: encodedItems)
        return bytes
    }

    /// Decodes a payload; throws on truncated, oversized, trailing or invalid bytes.
    public static func decode(_ payload: [UInt8]) throws(WireError) -> UpdateBatch {
        var r = WireReader(payload)
        let sequence = try r.u64()
        var items: [ReplicationItem] = []
        for _ in 0..<(try r.count(limit: maxItems)) { items.append(try ReplicationItem(from: &r)) }
        try r.expectEnd()
        return UpdateBatch(sequence: sequence, items: items)
    }
}

/// The payload of an `ack` frame: every update up to `sequence` was applied.
package struct AckMessage: Sendable, Equatable {
    public var sequence: UInt64
    public init(sequence: UInt64) { self.sequence = sequence }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u64(sequence)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> AckMessage {
        var r = WireReader(payload)
        let sequence = try r.u64()
        try r.expectEnd()
        return AckMessage(sequence: sequence)
    }
}

/// The payload of a `fetch` frame: the session whose full state is wanted,
/// and a request number the reply repeats.
package struct FetchRequest: Sendable, Equatable {
    public var id: SessionID
    public var request: UInt64
    public init(id: SessionID, request: UInt64) {
        self.id = id
        self.request = request
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.string(id.rawValue)
        w.u64(request)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> FetchRequest {
        var r = WireReader(payload)
        guard let id = SessionID(rawValue: try r.string(limit: 64)) else { throw WireError("invalid session id") }
        let request = try r.u64()
        try r.expectEnd()
        return FetchRequest(id: id, request: request)
    }
}

/// The payload of a `fetchReply` frame: the session's full state, or its
/// absence (unknown or expired on the answering node).
package struct FetchReply: Sendable, Equatable {
    public var id: SessionID
    public var request: UInt64
    public var update: SessionUpdate?

    public init(id: SessionID, request: UInt64, update: SessionUpdate?) {
        self.id = id
        self.request = request
        self.update = update
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.string(id.rawValue)
        w.u64(request)
        w.bool(update != nil)
        update?.encode(into: &w)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> FetchReply {
        var r = WireReader(payload)
        guard let id = SessionID(rawValue: try r.string(limit: 64)) else { throw WireError("invalid session id") }
        let request = try r.u64()
        let update = try r.bool() ? try SessionUpdate(from: &r) : nil
        try r.expectEnd()
        if let update, update.id != id { throw WireError("fetch reply for \(id) carries another session") }
        return FetchReply(id: id, request: request, update: update)
    }
}

/// The payload of a `snapshotRequest` frame. With `onlyIfReady`, a sender
/// that is not ready itself sends no chunks, only its `SnapshotEnd` (a
/// rejoining node replaces its state only by a ready peer's).
package struct SnapshotRequest: Sendable, Equatable {
    public var onlyIfReady: Bool
    public init(onlyIfReady: Bool) { self.onlyIfReady = onlyIfReady }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.bool(onlyIfReady)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> SnapshotRequest {
        var r = WireReader(payload)
        let onlyIfReady = try r.bool()
        try r.expectEnd()
        return SnapshotRequest(onlyIfReady: onlyIfReady)
    }
}

/// The payload of a `fenced` frame: the receiver's incarnation that the
/// sender declared dead, and why. A notice naming an older incarnation than
/// the receiver's current one is stale and ignored.
package struct FencedNotice: Sendable, Equatable {
    public static let maxReasonBytes = 512
    public var incarnation: UInt64
    public var reason: String
    public init(incarnation: UInt64, reason: String) {
        self.incarnation = incarnation
        var reason = Substring(reason)
        while reason.utf8.count > Self.maxReasonBytes { reason = reason.dropLast() }
        self.reason = String(reason)
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u64(incarnation)
        w.string(reason)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> FencedNotice {
        var r = WireReader(payload)
        let incarnation = try r.u64()
        let reason = try r.string(limit: maxReasonBytes)
        try r.expectEnd()
        return FencedNotice(incarnation: incarnation, reason: reason)
    }
}

/// The payload of a `snapshotEnd` frame: how many items the transfer sent,
/// and whether the sender had its own full state (it had finished its own
/// state transfer, or started alone).
package struct SnapshotEnd: Sendable, Equatable {
    public var itemCount: UInt64
    public var senderReady: Bool

    public init(itemCount: UInt64, senderReady: Bool) {
        self.itemCount = itemCount
        self.senderReady = senderReady
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u64(itemCount)
        w.bool(senderReady)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> SnapshotEnd {
        var r = WireReader(payload)
        let count = try r.u64()
        let ready = try r.bool()
        try r.expectEnd()
        return SnapshotEnd(itemCount: count, senderReady: ready)
    }
}

/// The payload of a `keyLookup` frame (sync mode): an `Idempotency-Key` a
/// request is about to run with, and a request number the reply repeats.
package struct KeyLookup: Sendable, Equatable {
    public var key: String
    public var request: UInt64

    public init(key: String, request: UInt64) {
        self.key = key
        self.request = request
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.string(key)
        w.u64(request)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> KeyLookup {
        var r = WireReader(payload)
        let key = try r.string(limit: SessionUpdate.maxNameBytes)
        let request = try r.u64()
        try r.expectEnd()
        return KeyLookup(key: key, request: request)
    }
}

/// The payload of a `keyLookupReply` frame: what the answering node knows of
/// the key.
package struct KeyLookupReply: Sendable, Equatable {
    public enum Answer: Sendable, Equatable {
        /// Never seen, or expired.
        case unknown
        /// A request runs with it there, claimed at this stamp.
        case inProgress(claimedAt: HLCStamp)
        /// Completed: the record, and the full state of the session its request changed, if any.
        case completed(ReplicatedRecord, session: SessionUpdate?)
    }

    public var key: String
    public var request: UInt64
    public var answer: Answer

    public init(key: String, request: UInt64, answer: Answer) {
        self.key = key
        self.request = request
        self.answer = answer
    }

    /// Key, request number, then a kind byte (0 unknown, 1 in progress + stamp,
    /// 2 completed + record + optional session).
    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.string(key)
        w.u64(request)
        switch answer {
        case .unknown:
            w.u8(0)
        case .inProgress(let stamp):
            w.u8(1)
            stamp.encode(into: &w)
        case .completed(let record, let session):
            w.u8(2)
            record.encode(into: &w)
            w.bool(session != nil)
            session?.encode(into: &w)
        }
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(WireError) -> KeyLookupReply {
        var r = WireReader(payload)
        let key = try r.string(limit: SessionUpdate.maxNameBytes)
        let request = try r.u64()
        let answer: Answer
        switch try r.u8() {
        case 0:
            answer = .unknown
        case 1:
            answer = .inProgress(claimedAt: try HLCStamp(from: &r))
        case 2:
            let record = try ReplicatedRecord(from: &r)
            guard record.record.key == key else { throw WireError("lookup reply for '\(key)' carries another key") }
            answer = .completed(record, session: try r.bool() ? try SessionUpdate(from: &r) : nil)
        case let kind:
            throw WireError("unknown lookup answer \(kind)")
        }
        try r.expectEnd()
        return KeyLookupReply(key: key, request: request, answer: answer)
    }
}
