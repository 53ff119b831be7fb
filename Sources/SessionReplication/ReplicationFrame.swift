import Crypto
import MiniHTTP

/// What a replication frame carries (payloads in ReplicationMessages.swift).
/// The raw values are part of the wire protocol: never renumber them, only
/// append. 0 is reserved and never valid, so a run of zero bytes cannot pass
/// for a frame header.
public enum FrameType: UInt8, Sendable, CaseIterable {
    /// 1: the first frame each side sends (`HelloMessage`).
    case hello = 1
    /// 2: sessions' changed states and idempotency records, with a sequence number (`UpdateBatch`).
    case update = 2
    /// 3: every update up to a sequence number was applied (`AckMessage`).
    case ack = 3
    /// 4: asks for a session's full state (`FetchRequest`, read-your-writes).
    case fetch = 4
    /// 5: the answer to a `fetch` (`FetchReply`).
    case fetchReply = 5
    /// 6: asks for a full state transfer (empty payload).
    case snapshotRequest = 6
    /// 7: one chunk of a state transfer (`UpdateBatch`, sequence number 0).
    case snapshotChunk = 7
    /// 8: the end of a state transfer (`SnapshotEnd`).
    case snapshotEnd = 8
    /// 9: keep-alive on an idle connection (empty payload, not answered).
    case ping = 9
    /// 10: sync mode: asks what the peer knows of an `Idempotency-Key` (`KeyLookup`).
    case keyLookup = 10
    /// 11: the answer to a `keyLookup` (`KeyLookupReply`).
    case keyLookupReply = 11
}

/// One authenticated message between two nodes: a type and opaque payload bytes.
public struct ReplicationFrame: Sendable, Equatable {
    public var type: FrameType
    public var payload: [UInt8]

    public init(type: FrameType, payload: [UInt8] = []) {
        self.type = type
        self.payload = payload
    }
}

/// Why a peer's byte stream was rejected. The connection must be closed:
/// nothing after the error can be trusted, and nothing in the bad frame is applied.
public struct FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The stream does not start with "SCR1" (not a replication peer, or out of sync).
        case badMagic
        /// The frame's version byte is not one this node speaks.
        case unsupportedVersion
        /// The frame's type byte is not a known `FrameType`.
        case unknownType
        /// The announced payload length exceeds the limit.
        case oversized
        /// The HMAC does not match: a wrong cluster secret, or corrupted or forged bytes.
        case badTag
        /// The stream ended inside a frame.
        case truncated
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "replication frame error (\(code)): \(message)" }
}

/// The cluster secret was unusable.
public struct ClusterSecretError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "cluster secret error: \(message)" }
}

/// Encodes frames: magic "SCR1" · version (1 byte) · type (1 byte) ·
/// payload length (4 bytes, big endian) · payload · HMAC-SHA256 (32 bytes)
/// over everything before it, keyed with the cluster secret.
public struct FrameCodec: Sendable {
    /// "SCR1".
    public static let magic: [UInt8] = Array("SCR1".utf8)
    /// The frame format version this node writes and accepts.
    public static let version: UInt8 = 1
    /// Magic, version, type and length.
    public static let headerByteCount = 10
    /// The HMAC-SHA256 tag.
    public static let tagByteCount = 32
    /// The shortest accepted cluster secret.
    public static let minimumSecretByteCount = 16
    /// The default payload limit: 4 MiB.
    public static let defaultMaxPayloadBytes = 4 << 20

    /// The largest payload encoded or accepted.
    public let maxPayloadBytes: Int
    private let secret: [UInt8]

    /// A codec keyed with `secret` (at least 16 bytes; shorter throws).
    /// `maxPayloadBytes` must lie in `0...UInt32.max`.
    public init(secret: [UInt8], maxPayloadBytes: Int = FrameCodec.defaultMaxPayloadBytes) throws(ClusterSecretError) {
        guard secret.count >= Self.minimumSecretByteCount else {
            throw ClusterSecretError(
                "the cluster secret has \(secret.count) bytes; at least \(Self.minimumSecretByteCount) are required")
        }
        precondition(maxPayloadBytes >= 0 && UInt64(maxPayloadBytes) <= UInt64(UInt32.max), "invalid payload limit")
        self.secret = secret
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// The frame's bytes, tag included. The payload must not exceed `maxPayloadBytes`
    /// (a precondition: the peer would reject the frame and close the connection).
    public func encode(_ frame: ReplicationFrame) -> [UInt8] {
        precondition(
            frame.payload.count <= maxPayloadBytes,
            "frame payload of \(frame.payload.count) bytes exceeds the limit of \(maxPayloadBytes)")
        var w = WireWriter()
        for b in Self.magic { w.u8(b) }
        w.u8(Self.version)
        w.u8(frame.type.rawValue)
        w.u32(UInt32(frame.payload.count))
        var out = w.bytes
        out.reserveCapacity(Self.headerByteCount + frame.payload.count + Self.tagByteCount)
        out.append(contentsOf: frame.payload)
        let tag = HMAC<SHA256>.authenticationCode(for: out, using: SymmetricKey(data: secret))
        out.append(contentsOf: tag)
        return out
    }

    /// True when `tag` is the HMAC of `authenticated` (constant-time comparison).
    func isValidTag(_ tag: UnsafeRawBufferPointer, for authenticated: UnsafeRawBufferPointer) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(tag, authenticating: authenticated, using: SymmetricKey(data: secret))
    }
}

/// An incremental frame decoder for one connection.
///
/// Feed it bytes as they arrive, in any split, with `append`; pull frames with
/// `next()` until it returns nil (more input needed). The magic and version are
/// checked as soon as their bytes arrive, the type and length limit as soon as
/// the header is complete (before any payload is buffered), and the HMAC before
/// a frame is returned. After an error every later call to `next()` throws the
/// same error: close the connection.
public struct FrameDecoder: Sendable {
    public let codec: FrameCodec
    private var buffer: [UInt8] = []
    private var readIndex = 0
    private var failure: FrameError?

    public init(codec: FrameCodec) {
        self.codec = codec
    }

    /// Bytes received but not yet returned as frames. Non-zero at end of stream
    /// means the peer sent a truncated frame.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    /// True when no frame is partly received (and no error occurred).
    public var isAtFrameBoundary: Bool { failure == nil && bufferedByteCount == 0 }

    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        compactIfUseful()
        buffer.append(contentsOf: bytes)
    }

    private mutating func compactIfUseful() {
        readIndex -= compactConsumed(&buffer, readIndex: readIndex)
    }

    /// The next authenticated frame, or nil when more input is needed.
    public mutating func next() throws(FrameError) -> ReplicationFrame? {
        if let failure { throw failure }
        do throws(FrameError) {
            return try parse()
        } catch {
            failure = error
            throw error
        }
    }

    private mutating func parse() throws(FrameError) -> ReplicationFrame? {
        let start = readIndex
        let available = buffer.count - start
        let magic = FrameCodec.magic
        for i in 0..<min(available, magic.count) where buffer[start + i] != magic[i] {
            let got = buffer[start..<start + min(available, magic.count)].map { hex($0) }.joined(separator: " ")
            throw FrameError(.badMagic, "expected \"SCR1\", got \(got)")
        }
        guard available > 4 else { return nil }
        let version = buffer[start + 4]
        guard version == FrameCodec.version else {
            throw FrameError(.unsupportedVersion, "frame version \(version); this node speaks \(FrameCodec.version)")
        }
        guard available > 5 else { return nil }
        guard let type = FrameType(rawValue: buffer[start + 5]) else {
            throw FrameError(.unknownType, "unknown frame type \(buffer[start + 5])")
        }
        let header = FrameCodec.headerByteCount
        guard available >= header else { return nil }
        let length = Int(buffer[start + 6..<start + 10].reduce(0) { $0 << 8 | UInt32($1) })
        guard length <= codec.maxPayloadBytes else {
            throw FrameError(
                .oversized, "\(type) frame announces \(length) payload bytes; the limit is \(codec.maxPayloadBytes)")
        }
        let tagStart = start + header + length
        let end = tagStart + FrameCodec.tagByteCount
        guard buffer.count >= end else { return nil }
        let valid = buffer.withUnsafeBytes { raw in
            codec.isValidTag(
                UnsafeRawBufferPointer(rebasing: raw[tagStart..<end]),
                for: UnsafeRawBufferPointer(rebasing: raw[start..<tagStart]))
        }
        guard valid else {
            throw FrameError(.badTag, "HMAC mismatch on a \(type) frame (wrong cluster secret, or corrupted bytes)")
        }
        let frame = ReplicationFrame(type: type, payload: Array(buffer[start + header..<tagStart]))
        readIndex = end
        return frame
    }

    private func hex(_ b: UInt8) -> String { (b < 16 ? "0x0" : "0x") + String(b, radix: 16) }
}

/// The payload of the `hello` frame, the first frame each side sends.
public struct HelloMessage: Sendable, Equatable {
    /// The protocol version this build speaks.
    public static let currentProtocolVersion: UInt32 = 2
    /// The longest node name, in UTF-8 bytes.
    public static let maxNodeNameBytes = 255
    /// The longest replication address, in UTF-8 bytes.
    public static let maxAddressBytes = 1024

    public var nodeID: UInt32
    public var nodeName: String
    public var protocolVersion: UInt32
    /// The replication address the sender listens on, e.g. "10.0.0.5:7400".
    public var address: String
    /// Random per process start: tells a node's own address in the peer list
    /// (same id, same incarnation) from another node misconfigured with its id.
    public var incarnation: UInt64

    /// Throws when the name or address is too long.
    public init(
        nodeID: UInt32, nodeName: String, protocolVersion: UInt32 = HelloMessage.currentProtocolVersion,
        address: String, incarnation: UInt64 = 0
    ) throws(WireError) {
        guard nodeName.utf8.count <= Self.maxNodeNameBytes else {
            throw WireError("node name of \(nodeName.utf8.count) bytes exceeds \(Self.maxNodeNameBytes)")
        }
        guard address.utf8.count <= Self.maxAddressBytes else {
            throw WireError("address of \(address.utf8.count) bytes exceeds \(Self.maxAddressBytes)")
        }
        self.nodeID = nodeID
        self.nodeName = nodeName
        self.protocolVersion = protocolVersion
        self.address = address
        self.incarnation = incarnation
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u32(nodeID)
        w.string(nodeName)
        w.u32(protocolVersion)
        w.string(address)
        w.u64(incarnation)
        return w.bytes
    }

    /// Decodes a `hello` payload; throws on truncated, oversized, trailing or invalid bytes.
    public static func decode(_ payload: [UInt8]) throws(WireError) -> HelloMessage {
        var r = WireReader(payload)
        let nodeID = try r.u32()
        let nodeName = try r.string(limit: maxNodeNameBytes)
        let protocolVersion = try r.u32()
        let address = try r.string(limit: maxAddressBytes)
        let incarnation = try r.u64()
        try r.expectEnd()
        return try HelloMessage(
            nodeID: nodeID, nodeName: nodeName, protocolVersion: protocolVersion, address: address,
            incarnation: incarnation)
    }

    /// This message as a `hello` frame.
    public var frame: ReplicationFrame { ReplicationFrame(type: .hello, payload: encode()) }
}
