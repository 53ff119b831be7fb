import Crypto
import SystemSupport

/// What a replication frame carries (payloads in ReplicationMessages.swift).
/// The raw values are part of the wire protocol: never renumber them, only
/// append. 0 is reserved and never valid, so a run of zero bytes cannot pass
/// for a frame header.
package enum FrameType: UInt8, Sendable, CaseIterable {
    /// 1: the first frame each side sends, in clear (`HelloMessage`); never sealed.
    case hello = 1
    /// 2: sessions' changed states and idempotency records, with a sequence number (`UpdateBatch`).
    case update = 2
    /// 3: every update up to a sequence number was applied (`AckMessage`).
    case ack = 3
    /// 4: asks for a session's full state (`FetchRequest`, read-your-writes).
    case fetch = 4
    /// 5: the answer to a `fetch` (`FetchReply`).
    case fetchReply = 5
    /// 6: asks for a full state transfer (`SnapshotRequest`).
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
    /// 12: the first sealed frame each side sends (empty payload): proves it
    /// holds the cluster secret and derived this connection's keys.
    case keyConfirmation = 12
    /// 13: the receiver's incarnation was declared dead by the sender (`FencedNotice`):
    /// its changes are refused until it rejoins under a new one (docs/replication.md, *Membership*).
    case fenced = 13
}

/// One message between two nodes: a type and opaque payload bytes.
package struct ReplicationFrame: Sendable, Equatable {
    public var type: FrameType
    public var payload: [UInt8]

    public init(type: FrameType, payload: [UInt8] = []) {
        self.type = type
        self.payload = payload
    }
}

/// Why a peer's byte stream was rejected. The connection must be closed:
/// nothing after the error can be trusted, and nothing in the bad frame is applied.
package struct FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The stream does not start with "SCR1" (not a replication peer, or out of sync).
        case badMagic
        /// The frame's version byte is not one this node speaks.
        case unsupportedVersion
        /// The frame's kind byte, or its sealed message type, is not known.
        case unknownType
        /// The announced length exceeds the limit (a hello's limit before the handshake).
        case oversized
        /// A sealed frame failed authentication: a wrong cluster secret, or
        /// bytes tampered with, replayed, reordered or dropped.
        case badTag
        /// The stream ended inside a frame.
        case truncated
        /// A plaintext frame after the handshake, or a sealed one before it.
        case unexpectedKind
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
package struct ClusterSecretError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "cluster secret error: \(message)" }
}

/// The frame layout (docs/replication.md, "Wire protocol"): magic "SCR1" ·
/// format version (1 byte) · kind (1 byte) · body length (4 bytes, big
/// endian) · body.
///
/// - kind 1, `hello`: the body is a `HelloMessage`, in clear (the handshake);
/// - kind 2, sealed: the body is ChaCha20-Poly1305 ciphertext of the message
///   type (1 byte) and payload, then the 16-byte tag; the header is the
///   associated data and the nonce is the count of frames sealed before it
///   in that direction (`FrameSealer`, `FrameOpener`).
package enum FrameFormat {
    /// "SCR1".
    public static let magic: [UInt8] = Array("SCR1".utf8)
    /// The format version this node writes and accepts (1 was HMAC-only).
    public static let version: UInt8 = 2
    /// Magic, version, kind and length.
    public static let headerByteCount = 10
    /// The Poly1305 tag of a sealed frame.
    public static let tagByteCount = 16
    /// The default payload limit of a sealed frame: 4 MiB.
    public static let defaultMaxPayloadBytes = 4 << 20
    /// A hello's body limit: every connection may send one before it is authenticated.
    public static let maxHelloBytes = 2048

    /// The kind byte.
    public enum Kind: UInt8, Sendable {
        case hello = 1
        case sealed = 2
    }

    /// The 10 header bytes of a frame of `kind` whose body has `length` bytes.
    public static func header(kind: Kind, length: Int) -> [UInt8] {
        var w = WireWriter()
        for b in magic { w.u8(b) }
        w.u8(version)
        w.u8(kind.rawValue)
        w.u32(UInt32(length))
        return w.bytes
    }

    /// A hello frame's bytes (in clear: the handshake binds it to the keys).
    public static func helloFrame(_ hello: HelloMessage) -> [UInt8] {
        let body = hello.encode()
        return header(kind: .hello, length: body.count) + body
    }
}

/// An incremental frame decoder for one connection.
///
/// Feed it bytes as they arrive, in any split, with `append`; pull frames with
/// `next()` until it returns nil (more input needed). Until `startOpening` it
/// accepts only `hello` frames (at most `FrameFormat.maxHelloBytes`: nothing
/// larger is buffered for an unauthenticated peer); after it, only sealed
/// frames, each opened (authenticated, decrypted, in order) before it is
/// returned. The magic and version are checked as soon as their bytes arrive,
/// the kind and length limit as soon as the header is complete (before any
/// body is buffered). After an error every later call to `next()` throws the
/// same error: close the connection.
package struct FrameDecoder: Sendable {
    /// The largest sealed payload accepted.
    public let maxPayloadBytes: Int
    private var opener: FrameOpener?
    private var buffer: [UInt8] = []
    private var readIndex = 0
    private var failure: FrameError?

    public init(maxPayloadBytes: Int = FrameFormat.defaultMaxPayloadBytes) {
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// From now on, frames are sealed with `opener`'s key (the handshake is done).
    public mutating func startOpening(with opener: FrameOpener) {
        self.opener = opener
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

    /// The next frame, or nil when more input is needed.
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
        let magic = FrameFormat.magic
        for i in 0..<min(available, magic.count) where buffer[start + i] != magic[i] {
            let got = buffer[start..<start + min(available, magic.count)].map { hex($0) }.joined(separator: " ")
            throw FrameError(.badMagic, "expected \"SCR1\", got \(got)")
        }
        guard available > 4 else { return nil }
        let version = buffer[start + 4]
        guard version == FrameFormat.version else {
            throw FrameError(
                .unsupportedVersion, "frame format \(version); this node speaks \(FrameFormat.version) (encrypted)")
        }
        guard available > 5 else { return nil }
        guard let kind = FrameFormat.Kind(rawValue: buffer[start + 5]) else {
            throw FrameError(.unknownType, "unknown frame kind \(buffer[start + 5])")
        }
        switch (kind, opener) {
        case (.hello, nil), (.sealed, _?): break
        case (.hello, _?): throw FrameError(.unexpectedKind, "a hello after the handshake")
        case (.sealed, nil): throw FrameError(.unexpectedKind, "a sealed frame before the handshake")
        }
        let header = FrameFormat.headerByteCount
        guard available >= header else { return nil }
        let length = Int(buffer[start + 6..<start + 10].reduce(0) { $0 << 8 | UInt32($1) })
        let limit = kind == .hello ? FrameFormat.maxHelloBytes : maxPayloadBytes + 1 + FrameFormat.tagByteCount
        guard length <= limit else {
            throw FrameError(.oversized, "a \(kind) frame announces \(length) bytes; the limit is \(limit)")
        }
        let end = start + header + length
        guard buffer.count >= end else { return nil }
        let frame: ReplicationFrame
        if kind == .hello {
            frame = ReplicationFrame(type: .hello, payload: Array(buffer[start + header..<end]))
        } else {
            frame = try opener!.open(header: buffer[start..<start + header], body: buffer[start + header..<end])
        }
        readIndex = end
        return frame
    }

    private func hex(_ b: UInt8) -> String { (b < 16 ? "0x0" : "0x") + String(b, radix: 16) }
}

/// The payload of the `hello` frame, the first frame each side sends, in
/// clear. Both hellos (their nonces included) go into the connection's key
/// derivation, so a hello that was changed, or replayed from another
/// connection, leaves its sender unable to confirm the keys.
package struct HelloMessage: Sendable, Equatable {
    /// The protocol version this build speaks (3: authenticated handshake, encrypted frames;
    /// 4: membership fencing, the `fenced` frame and `SnapshotRequest.onlyIfReady`).
    public static let currentProtocolVersion: UInt32 = 4
    /// The nonce's length.
    public static let nonceByteCount = 32
    /// The longest node name, in UTF-8 bytes.
    public static let maxNodeNameBytes = 255
    /// The longest replication address, in UTF-8 bytes.
    public static let maxAddressBytes = 1024

    public var nodeID: UInt32
    public var nodeName: String
    public var protocolVersion: UInt32
    /// The replication address the sender listens on, e.g. "10.0.0.5:7400".
    public var address: String
    /// Random per process start, and new at every rejoin: the node's membership
    /// epoch (peers fence an incarnation they declared dead), and what tells a
    /// node's own address in the peer list (same id, same incarnation) from
    /// another node misconfigured with its id.
    public var incarnation: UInt64
    /// Fresh random bytes of this connection: they make its keys its own.
    public var nonce: [UInt8]

    /// Throws when the name or address is too long, or the nonce is not 32 bytes.
    public init(
        nodeID: UInt32, nodeName: String, protocolVersion: UInt32 = HelloMessage.currentProtocolVersion,
        address: String, incarnation: UInt64 = 0, nonce: [UInt8] = HelloMessage.freshNonce()
    ) throws(WireError) {
        guard nonce.count == Self.nonceByteCount else {
            throw WireError("a hello nonce of \(nonce.count) bytes; \(Self.nonceByteCount) required")
        }
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
        self.nonce = nonce
    }

    /// 32 bytes from the system CSPRNG.
    public static func freshNonce() -> [UInt8] { secureRandomBytes(nonceByteCount) }

    /// This hello with a fresh nonce (one per connection).
    public func renewed() -> HelloMessage {
        var hello = self
        hello.nonce = Self.freshNonce()
        return hello
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u32(nodeID)
        w.string(nodeName)
        w.u32(protocolVersion)
        w.string(address)
        w.u64(incarnation)
        for b in nonce { w.u8(b) }
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
        let nonce = try (0..<nonceByteCount).map { _ throws(WireError) in try r.u8() }
        try r.expectEnd()
        return try HelloMessage(
            nodeID: nodeID, nodeName: nodeName, protocolVersion: protocolVersion, address: address,
            incarnation: incarnation, nonce: nonce)
    }
}
