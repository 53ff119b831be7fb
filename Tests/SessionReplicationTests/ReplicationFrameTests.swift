#if canImport(Glibc)
import Glibc
#endif
import SessionReplication
import SystemSupport
import Testing

/// SplitMix64: a tiny seedable generator so every random test is reproducible.
private struct FrameTestRNG: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0..<bound` (bound > 0); cheaper than `Int.random(in:using:)` in debug builds.
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var word = next()
            for _ in 0..<min(8, n - i) {
                out[i] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                i += 1
            }
        }
        return out
    }
}

private let secret = try! ClusterSecret(Array("sixteen-byte-key-for-the-cluster".utf8))
private let otherSecret = try! ClusterSecret(Array("another-cluster-with-its-own-key".utf8))

/// The hellos of the known-answer test: fixed nonces 0...31 and 32...63.
// Protocol 3 as the known answers below were computed with; the layout and derivation are the same in 4.
private let clientHello = try! HelloMessage(
    nodeID: 1, nodeName: "a", protocolVersion: 3, address: "127.0.0.1:7401", incarnation: 1, nonce: Array(0..<32))
private let serverHello = try! HelloMessage(
    nodeID: 2, nodeName: "b", protocolVersion: 3, address: "127.0.0.1:7402", incarnation: 2, nonce: Array(32..<64))

/// Both ends of one connection: what the client seals, the server opens, and back.
private struct Connection {
    let client: (seal: FrameSealer, open: FrameOpener)
    let server: (seal: FrameSealer, open: FrameOpener)

    /// Keys from these hellos (fresh sealers: their counters start at 0).
    init(
        secret: ClusterSecret = secret, client clientHello: HelloMessage = clientHello,
        server serverHello: HelloMessage = serverHello
    ) {
        client = secret.connectionKeys(clientHello: clientHello, serverHello: serverHello, accepted: false)
        server = secret.connectionKeys(clientHello: clientHello, serverHello: serverHello, accepted: true)
    }

    /// A connection of its own: both hellos with fresh nonces.
    static func fresh(secret: ClusterSecret = secret) -> Connection {
        Connection(secret: secret, client: clientHello.renewed(), server: serverHello.renewed())
    }

    /// A decoder for what the client sends, past the handshake.
    var serverDecoder: FrameDecoder {
        var decoder = FrameDecoder()
        decoder.startOpening(with: server.open)
        return decoder
    }
}

/// Feeds `chunks` one by one, draining after each; returns the frames and the error, if any.
private func decode(_ chunks: [[UInt8]], with decoder: FrameDecoder) -> (frames: [ReplicationFrame], error: FrameError?) {
    decode(chunks.flatMap { $0 }, cuts: chunks.map(\.count), with: decoder)
}

/// Feeds `bytes` in pieces of the given sizes, draining after each.
private func decode(
    _ bytes: [UInt8], cuts: [Int], with decoder: FrameDecoder
) -> (frames: [ReplicationFrame], error: FrameError?) {
    var decoder = decoder
    var frames: [ReplicationFrame] = []
    var offset = 0
    for n in cuts {
        decoder.append(bytes[offset..<offset + n])
        offset += n
        do {
            while let frame = try decoder.next() { frames.append(frame) }
        } catch {
            return (frames, error)
        }
    }
    return (frames, nil)
}

/// Random piece sizes (1...maxChunk) that add up to `count`.
private func randomCuts(_ count: Int, maxChunk: Int, rng: inout FrameTestRNG) -> [Int] {
    var cuts: [Int] = []
    var i = 0
    while i < count {
        let n = min(1 + rng.below(maxChunk), count - i)
        cuts.append(n)
        i += n
    }
    return cuts
}

private func header(kind: UInt8, length: UInt32, version: UInt8 = FrameFormat.version) -> [UInt8] {
    var w = WireWriter()
    for b in "SCR1".utf8 { w.u8(b) }
    w.u8(version)
    w.u8(kind)
    w.u32(length)
    return w.bytes
}

private func hexBytes(_ hex: String) -> [UInt8] {
    let digits = Array(hex.utf8)
    return stride(from: 0, to: digits.count, by: 2).map { i in
        UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16)!
    }
}

/// Every type a sealed frame may carry (a hello is never sealed).
private let sealedTypes = FrameType.allCases.filter { $0 != .hello }

private func sampleFrames() -> [ReplicationFrame] {
    var rng = FrameTestRNG(seed: 7)
    return sealedTypes.flatMap { type in
        [
            ReplicationFrame(type: type),
            ReplicationFrame(type: type, payload: Array("payload of \(type)".utf8)),
            ReplicationFrame(type: type, payload: rng.bytes(1 + rng.below(3000))),
        ]
    }
}

/// The error `next()` throws, or nil when it returns.
private func nextError(_ decoder: inout FrameDecoder) -> FrameError? {
    do {
        _ = try decoder.next()
        return nil
    } catch {
        return error
    }
}

@Suite struct ReplicationFrameTests {
    @Test func frameTypeRawValuesAreStable() {
        let expected: [FrameType: UInt8] = [
            .hello: 1, .update: 2, .ack: 3, .fetch: 4, .fetchReply: 5, .snapshotRequest: 6, .snapshotChunk: 7,
            .snapshotEnd: 8, .ping: 9, .keyLookup: 10, .keyLookupReply: 11, .keyConfirmation: 12, .fenced: 13,
        ]
        #expect(FrameType.allCases.count == expected.count)
        for type in FrameType.allCases { #expect(type.rawValue == expected[type]) }
        #expect(FrameType(rawValue: 0) == nil)
        #expect(FrameFormat.Kind.hello.rawValue == 1 && FrameFormat.Kind.sealed.rawValue == 2)
    }

    /// Known answers computed independently (Python: hashlib, `cryptography`'s HKDF
    /// and ChaCha20Poly1305): the hello layout, the key derivation from the secret
    /// and both hellos, the per-direction keys, the counter nonce, the header as
    /// associated data.
    @Test func encodesTheDocumentedLayout() {
        // Hello: "SCR1" · version 2 · kind 1 · length 71 · id · name · protocol 3 · address · incarnation · nonce.
        let hello = FrameFormat.helloFrame(clientHello)
        #expect(
            hello == hexBytes(
                "53435231020100000047000000010000000161000000030000000e3132372e302e302e313a373430310000000000000001"
                    + "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
        #expect(Array(hello.prefix(FrameFormat.headerByteCount)) == FrameFormat.header(kind: .hello, length: 71))

        // Sealed: "SCR1" · 2 · kind 2 · length (1 + payload + 16) · ChaCha20(type · payload) · Poly1305 tag.
        let connection = Connection()
        let ping = ReplicationFrame(type: .ping, payload: Array("hi".utf8))
        let first = connection.client.seal.seal(ping)
        #expect(first == hexBytes("534352310202000000134b9f7b8ec9387101f0ca6ccdf2f004caddc349"))
        #expect(first.count == FrameFormat.headerByteCount + 1 + 2 + FrameFormat.tagByteCount)
        // The same frame again: the counter (the nonce) moved on, so other bytes.
        #expect(connection.client.seal.seal(ping) == hexBytes("534352310202000000131ce6c2ca0a85c0ce6a1397465c48ef227c7ee9"))
        // The other direction has its own key, its own counter.
        #expect(
            connection.server.seal.seal(ReplicationFrame(type: .keyConfirmation))
                == hexBytes("534352310202000000118ff8ec5195cb1019176dd8e248179fa28e"))
    }

    @Test func roundTripsEverySealedType() throws {
        let connection = Connection()
        var decoder = connection.serverDecoder
        for frame in sampleFrames() {
            let bytes = connection.client.seal.seal(frame)
            #expect(bytes.count == FrameFormat.headerByteCount + 1 + frame.payload.count + FrameFormat.tagByteCount)
            // The header is the documented wire format (docs/replication.md, "Wire protocol"):
            // magic, format version 2, kind 2 (sealed).
            #expect(Array(bytes.prefix(6)) == Array("SCR1".utf8) + [2, 2])
            decoder.append(bytes)
            #expect(try decoder.next() == frame)
            #expect(try decoder.next() == nil)
            #expect(decoder.isAtFrameBoundary)
        }
        // And the other way.
        var clientDecoder = FrameDecoder()
        clientDecoder.startOpening(with: connection.client.open)
        for frame in sampleFrames() {
            clientDecoder.append(connection.server.seal.seal(frame))
            #expect(try clientDecoder.next() == frame)
        }
    }

    @Test func anySplitGivesTheSameFramesAsWholeInput() {
        let frames = sampleFrames()
        let connection = Connection()
        let stream = connection.client.seal.seal(frames)
        let whole = decode([stream], with: connection.serverDecoder)
        #expect(whole.frames == frames && whole.error == nil)
        let byteByByte = decode(stream.map { [$0] }, with: connection.serverDecoder)
        #expect(byteByByte.frames == frames && byteByByte.error == nil)
        var rng = FrameTestRNG(seed: 42)
        for round in 0..<50 {
            let cuts = randomCuts(stream.count, maxChunk: round % 2 == 0 ? 16 : 5000, rng: &rng)
            let split = decode(stream, cuts: cuts, with: connection.serverDecoder)
            #expect(split.frames == frames && split.error == nil, "round \(round)")
        }
    }

    @Test func pipelinedFramesInOneBuffer() throws {
        let frames = (0..<20).map { ReplicationFrame(type: .update, payload: [UInt8]("frame \($0)".utf8)) }
        let connection = Connection()
        var decoder = connection.serverDecoder
        let stream = connection.client.seal.seal(frames)
        let next = connection.client.seal.seal(frames[0])
        decoder.append(stream + next.prefix(7))
        for frame in frames { #expect(try decoder.next() == frame) }
        #expect(try decoder.next() == nil)
        #expect(decoder.bufferedByteCount == 7)
        #expect(!decoder.isAtFrameBoundary)
        // A hello and the frames right behind it in one buffer: the hello comes out alone,
        // the sealed frames wait (buffered) until the keys are known.
        let later = Connection()
        var handshake = FrameDecoder()
        handshake.append(FrameFormat.helloFrame(clientHello) + later.client.seal.seal(frames))
        #expect(try handshake.next()?.type == .hello)
        handshake.startOpening(with: later.server.open)
        for frame in frames { #expect(try handshake.next() == frame) }
        #expect(handshake.isAtFrameBoundary)
    }

    @Test func badMagicIsRejectedAtTheFirstWrongByte() {
        for opening in [false, true] {
            let template = opening ? Connection().serverDecoder : FrameDecoder()
            var decoder = template
            decoder.append(Array("G".utf8))
            #expect(nextError(&decoder)?.code == .badMagic)
            var http = template
            http.append(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            #expect(nextError(&http)?.code == .badMagic)
            var scr2 = template
            scr2.append(Array("SCR".utf8))
            #expect(nextError(&scr2) == nil)  // a correct prefix: still pending
            scr2.append(Array("2".utf8))
            #expect(nextError(&scr2)?.code == .badMagic)
        }
    }

    /// A node of the previous protocol (format 1: HMAC-only frames) is refused
    /// from its first frame's fifth byte (the format version in the documented header,
    /// docs/replication.md, "Wire protocol").
    @Test func unsupportedVersionIsRejectedFromTheHeaderAlone() throws {
        for version: UInt8 in [0, 1, 3, 255] {
            var decoder = FrameDecoder()
            decoder.append(Array("SCR1".utf8) + [version])
            let error = try #require(nextError(&decoder))
            #expect(error.code == .unsupportedVersion, "\(error)")
        }
        // A whole hello as a version-1 node sent it (type hello, its payload, a 32-byte HMAC).
        let old = header(kind: 1, length: 30, version: 1) + [UInt8](repeating: 0x41, count: 30 + 32)
        let result = decode([old], with: FrameDecoder())
        #expect(result.frames.isEmpty && result.error?.code == .unsupportedVersion)
        // After the handshake too, a sealed frame with its version byte changed.
        let connection = Connection()
        var sealed = connection.client.seal.seal(ReplicationFrame(type: .ping))
        sealed[4] = 1  // the format version byte (documented header layout)
        #expect(decode([sealed], with: connection.serverDecoder).error?.code == .unsupportedVersion)
    }

    @Test func unknownKindIsRejectedFromTheHeaderAlone() {
        for opening in [false, true] {
            for kind: UInt8 in [0, 3, 12, 200, 255] {
                var decoder = opening ? Connection().serverDecoder : FrameDecoder()
                decoder.append(Array("SCR1".utf8) + [FrameFormat.version, kind])
                #expect(nextError(&decoder)?.code == .unknownType, "kind \(kind)")
            }
        }
    }

    @Test func oversizedLengthIsRejectedBeforeTheBodyArrives() throws {
        // Before the handshake only a hello may come, of at most 2048 bytes: the header alone is refused.
        var hello = FrameDecoder()
        hello.append(header(kind: 1, length: UInt32(FrameFormat.maxHelloBytes + 1)))
        #expect(nextError(&hello)?.code == .oversized)
        var huge = FrameDecoder()
        huge.append(header(kind: 1, length: .max))
        #expect(nextError(&huge)?.code == .oversized)
        var atHelloLimit = FrameDecoder()
        atHelloLimit.append(header(kind: 1, length: UInt32(FrameFormat.maxHelloBytes)))
        #expect(nextError(&atHelloLimit) == nil)  // waits for the body
        // A hello-sized header of a sealed frame before the handshake is refused for its kind, not buffered.
        var sealedEarly = FrameDecoder()
        sealedEarly.append(header(kind: 2, length: 100))
        #expect(nextError(&sealedEarly)?.code == .unexpectedKind)

        // After it: the payload limit plus the type byte and the tag; the decoder must not wait for 4 MiB.
        let limit = FrameFormat.defaultMaxPayloadBytes + 1 + FrameFormat.tagByteCount
        var sealed = Connection().serverDecoder
        sealed.append(header(kind: 2, length: UInt32(limit + 1)))
        #expect(nextError(&sealed)?.code == .oversized)
        var sealedHuge = Connection().serverDecoder
        sealedHuge.append(header(kind: 2, length: .max))
        #expect(nextError(&sealedHuge)?.code == .oversized)
        var atLimit = Connection().serverDecoder
        atLimit.append(header(kind: 2, length: UInt32(limit)))
        #expect(nextError(&atLimit) == nil)
        // A smaller configured limit.
        let connection = Connection()
        var small = FrameDecoder(maxPayloadBytes: 100)
        small.startOpening(with: connection.server.open)
        #expect(small.maxPayloadBytes == 100)
        let fits = connection.client.seal.seal(ReplicationFrame(type: .update, payload: .init(repeating: 1, count: 100)))
        let over = connection.client.seal.seal(ReplicationFrame(type: .update, payload: .init(repeating: 1, count: 101)))
        let result = decode([fits, over], with: small)
        #expect(result.frames.count == 1 && result.error?.code == .oversized)
    }

    @Test func tamperedFramesAreRejected() {
        let frame = ReplicationFrame(type: .update, payload: Array("attribute=42".utf8))
        for bit in 0..<8 {
            let connection = Connection()
            let good = connection.client.seal.seal(frame)
            for position in [FrameFormat.headerByteCount, FrameFormat.headerByteCount + 3, good.count - 1 - bit] {
                var flipped = good
                flipped[position] ^= 1 << bit
                let result = decode([flipped], with: connection.serverDecoder)
                #expect(result.frames.isEmpty && result.error?.code == .badTag, "bit \(bit) at \(position)")
            }
            // The header is authenticated too (associated data): a length that still fits the bytes sent.
            var shorter = good
            shorter[9] -= 1  // the length's low byte (bytes 6...9, big endian: the documented header)
            #expect(decode([shorter], with: connection.serverDecoder).error?.code == .badTag)
            // The untouched frame still opens: the failures consumed nothing.
            #expect(decode([good], with: connection.serverDecoder).frames == [frame])
        }
        // A good frame followed by a bad one: the good one is returned, then the error.
        let connection = Connection()
        let first = connection.client.seal.seal(frame)
        var second = connection.client.seal.seal(frame)
        second[second.count - 1] ^= 0x80
        let mixed = decode([first + second], with: connection.serverDecoder)
        #expect(mixed.frames == [frame] && mixed.error?.code == .badTag)
    }

    @Test func aReplayedFrameIsRefused() {
        let connection = Connection()
        let frame = ReplicationFrame(type: .update, payload: Array("set n=1".utf8))
        let bytes = connection.client.seal.seal(frame)
        let result = decode([bytes, bytes], with: connection.serverDecoder)
        #expect(result.frames == [frame], "the original is accepted")
        #expect(result.error?.code == .badTag, "the same bytes again are not")
    }

    @Test func reorderedFramesAreRefused() {
        let connection = Connection()
        let frames = (0..<2).map { ReplicationFrame(type: .update, payload: Array("change \($0)".utf8)) }
        let first = connection.client.seal.seal(frames[0])
        let second = connection.client.seal.seal(frames[1])
        let swapped = decode([second, first], with: connection.serverDecoder)
        #expect(swapped.frames.isEmpty && swapped.error?.code == .badTag)
        #expect(decode([first, second], with: connection.serverDecoder).frames == frames, "in order they open")
    }

    @Test func aDroppedFrameMakesTheNextOneRefused() {
        let connection = Connection()
        let frames = (0..<3).map { ReplicationFrame(type: .update, payload: Array("change \($0)".utf8)) }
        let sealed = frames.map { connection.client.seal.seal($0) }
        let result = decode([sealed[0], sealed[2]], with: connection.serverDecoder)
        #expect(result.frames == [frames[0]] && result.error?.code == .badTag)
    }

    /// A frame sent back to the side that sealed it: each direction has its own key.
    @Test func aReflectedFrameIsRefused() {
        let connection = Connection()
        let frame = ReplicationFrame(type: .fetch, payload: Array("which session".utf8))
        var clientOwn = FrameDecoder()
        clientOwn.startOpening(with: connection.client.open)
        let fromClient = decode([connection.client.seal.seal(frame)], with: clientOwn)
        #expect(fromClient.frames.isEmpty && fromClient.error?.code == .badTag)
        var serverOwn = FrameDecoder()
        serverOwn.startOpening(with: connection.server.open)
        let fromServer = decode([connection.server.seal.seal(frame)], with: serverOwn)
        #expect(fromServer.frames.isEmpty && fromServer.error?.code == .badTag)
        // The key confirmations, the frames both sides send first, are not interchangeable either.
        let confirmation = ReplicationFrame(type: .keyConfirmation)
        let fresh = Connection()
        var serverSide = fresh.serverDecoder
        serverSide.append(fresh.server.seal.seal(confirmation))
        #expect(nextError(&serverSide)?.code == .badTag)
    }

    /// Same cluster secret, same peers, another connection (other hello nonces): other keys.
    @Test func aFrameSealedForAnotherConnectionIsRefused() {
        let frame = ReplicationFrame(type: .update, payload: Array("from the other connection".utf8))
        let one = Connection.fresh()
        let other = Connection.fresh()
        let result = decode([other.client.seal.seal(frame)], with: one.serverDecoder)
        #expect(result.frames.isEmpty && result.error?.code == .badTag)
        // Only the nonces differ: the same hellos otherwise.
        var renewedServer = serverHello
        renewedServer.nonce = Array(64..<96)
        let sameButNonce = Connection(client: clientHello, server: renewedServer)
        let again = decode([Connection().client.seal.seal(frame)], with: sameButNonce.serverDecoder)
        #expect(again.frames.isEmpty && again.error?.code == .badTag)
    }

    @Test func aFrameOfTheWrongKindForThePhaseIsRefused() throws {
        let connection = Connection()
        // A sealed frame before the handshake: refused from its header, before any body.
        var early = FrameDecoder()
        early.append(Array(connection.client.seal.seal(ReplicationFrame(type: .ping)).prefix(6)))
        #expect(nextError(&early)?.code == .unexpectedKind)
        // A hello after it.
        var late = connection.serverDecoder
        late.append(FrameFormat.helloFrame(clientHello))
        #expect(nextError(&late)?.code == .unexpectedKind)
        // Two hellos in one buffer: the first comes out alone; once the keys are known, the
        // second is refused (the key confirmation, sealed, must come next).
        var twice = FrameDecoder()
        twice.append(FrameFormat.helloFrame(clientHello) + FrameFormat.helloFrame(clientHello))
        #expect(try twice.next()?.type == .hello)
        twice.startOpening(with: connection.server.open)
        #expect(nextError(&twice)?.code == .unexpectedKind)
    }

    /// The hellos are exchanged in clear, so a wrong secret shows only at the first
    /// sealed frame: the peer's key confirmation.
    @Test func aWrongClusterSecretFailsAtTheFirstSealedFrame() throws {
        let mine = Connection(secret: secret)
        let theirs = Connection(secret: otherSecret)
        var decoder = FrameDecoder()
        decoder.append(FrameFormat.helloFrame(clientHello))
        let hello = try #require(try decoder.next())
        #expect(try HelloMessage.decode(hello.payload) == clientHello, "the hello itself carries no secret")
        decoder.startOpening(with: mine.server.open)
        decoder.append(theirs.client.seal.seal(ReplicationFrame(type: .keyConfirmation)))
        let error = try #require(nextError(&decoder))
        #expect(error.code == .badTag)
    }

    @Test func truncatedFrameStaysPendingAndNeverYieldsAFrame() throws {
        let connection = Connection()
        let bytes = connection.client.seal.seal(ReplicationFrame(type: .snapshotChunk, payload: Array(0..<100)))
        for cut in 0..<bytes.count {
            var decoder = connection.serverDecoder
            decoder.append(bytes.prefix(cut))
            #expect(try decoder.next() == nil)
            #expect(try decoder.next() == nil)
            #expect(decoder.bufferedByteCount == cut)
        }
        let hello = FrameFormat.helloFrame(clientHello)
        for cut in 0..<hello.count {
            var decoder = FrameDecoder()
            decoder.append(hello.prefix(cut))
            #expect(try decoder.next() == nil)
            #expect(decoder.bufferedByteCount == cut)
        }
    }

    @Test func errorsAreSticky() {
        let connection = Connection()
        var decoder = connection.serverDecoder
        decoder.append(Connection(secret: otherSecret).client.seal.seal(ReplicationFrame(type: .ping)))
        let first = nextError(&decoder)
        #expect(first?.code == .badTag)
        decoder.append(connection.client.seal.seal(ReplicationFrame(type: .ping)))
        for _ in 0..<3 { #expect(nextError(&decoder) == first) }
        #expect(!decoder.isAtFrameBoundary)
        // A phase change does not clear it either.
        var early = FrameDecoder()
        early.append(header(kind: 2, length: 17))
        let kindError = nextError(&early)
        #expect(kindError?.code == .unexpectedKind)
        early.startOpening(with: connection.server.open)
        #expect(nextError(&early) == kindError)
    }

    @Test func shortSecretIsRejected() throws {
        for count in [0, 1, 15] {
            #expect(throws: ClusterSecretError.self) { try ClusterSecret(Array(repeating: 7, count: count)) }
        }
        #expect(ClusterSecret.minimumByteCount == 16)
        let minimal = try ClusterSecret(Array(repeating: 7, count: 16))
        // Keys exist and work with the shortest secret.
        let connection = Connection(secret: minimal)
        let frame = ReplicationFrame(type: .ping)
        #expect(decode([connection.client.seal.seal(frame)], with: connection.serverDecoder).frames == [frame])
        #expect(connection.client.seal.maxPayloadBytes == 4 * 1024 * 1024)
        // The read-token key is derived, never the secret itself, and depends on it.
        #expect(minimal.readTokenKey.count == 32 && minimal.readTokenKey != Array(repeating: 7, count: 16))
        #expect(minimal.readTokenKey != secret.readTokenKey)
    }

    @Test func helloRoundTrips() throws {
        let hello = try HelloMessage(nodeID: 3, nodeName: "node-ç", address: "10.0.0.3:7400")
        #expect(hello.protocolVersion == HelloMessage.currentProtocolVersion && hello.protocolVersion == 4)
        #expect(hello.nonce.count == HelloMessage.nonceByteCount && hello.nonce.count == 32)
        #expect(try HelloMessage.decode(hello.encode()) == hello)
        let frames = decode([FrameFormat.helloFrame(hello)], with: FrameDecoder()).frames
        #expect(frames.count == 1 && frames[0].type == .hello)
        #expect(try HelloMessage.decode(frames[0].payload) == hello)

        // Fresh nonces: every hello, and every renewal, differs; nothing else changes.
        let other = try HelloMessage(nodeID: 3, nodeName: "node-ç", address: "10.0.0.3:7400")
        #expect(other.nonce != hello.nonce)
        let renewed = hello.renewed()
        #expect(renewed.nonce != hello.nonce)
        var sameNonce = renewed
        sameNonce.nonce = hello.nonce
        #expect(sameNonce == hello)
        #expect(HelloMessage.freshNonce() != HelloMessage.freshNonce())

        for count in [0, 31, 33] {
            #expect(throws: WireError.self) {
                try HelloMessage(nodeID: 1, nodeName: "n", address: "a", nonce: .init(repeating: 1, count: count))
            }
        }
        let longest = try HelloMessage(nodeID: 1, nodeName: String(repeating: "n", count: 255), address: "[::1]:7400")
        #expect(try HelloMessage.decode(longest.encode()) == longest)
        #expect(FrameFormat.helloFrame(longest).count <= FrameFormat.headerByteCount + FrameFormat.maxHelloBytes)
        #expect(throws: WireError.self) {
            try HelloMessage(nodeID: 1, nodeName: String(repeating: "n", count: 256), address: "a")
        }
        // A peer sending a 256-byte name, a missing nonce, truncation and trailing bytes are all rejected.
        var w = WireWriter()
        w.u32(1)
        w.string(String(repeating: "n", count: 256))
        w.u32(3)
        w.string("a")
        w.u64(1)
        for b in 0..<32 { w.u8(UInt8(b)) }
        #expect(throws: WireError.self) { try HelloMessage.decode(w.bytes) }
        #expect(throws: WireError.self) { try HelloMessage.decode(Array(hello.encode().dropLast(32))) }
        #expect(throws: WireError.self) { try HelloMessage.decode(Array(hello.encode().dropLast())) }
        #expect(throws: WireError.self) { try HelloMessage.decode(hello.encode() + [0]) }
    }

    /// Random and mutated streams of sealed frames: nothing crashes or hangs, and the
    /// frames the decoder returns are always the first ones sealed, unchanged and in
    /// order — never a changed, replayed, reordered or foreign one.
    @Test(arguments: 0..<8) func fuzzNeverAcceptsAForgedFrame(shard: Int) {
        let iterations = 16_000  // × 8 shards = 128,000 streams, 7/8 of them mutated
        var rng = FrameTestRNG(seed: 0x5EED_0000 + UInt64(shard))
        var failures: [String] = []
        var accepted = 0
        var rejected = 0
        var mutatedStreams = 0
        // One connection for every stream: each stream is decoded by a copy of `reference`, a
        // decoder whose opener expects the stream's first frame (advanced past it afterwards).
        let connection = Connection()
        var reference = connection.serverDecoder
        let foreign = Connection(secret: otherSecret)
        for iteration in 0..<iterations {
            // 1 to 4 frames, in sealing order; some sealed under another cluster's keys.
            var sealed: [ReplicationFrame] = []
            var pieces: [[UInt8]] = []
            var intact: [UInt8] = []
            var allGood = true
            for _ in 0..<1 + rng.below(4) {
                let type = sealedTypes[rng.below(sealedTypes.count)]
                let size = rng.below(100) < 80 ? rng.below(40) : rng.below(rng.below(100) < 90 ? 400 : 3000)
                let frame = ReplicationFrame(type: type, payload: rng.bytes(size))
                if rng.below(10) == 0 {
                    allGood = false
                    pieces.append(foreign.client.seal.seal(frame))
                } else {
                    sealed.append(frame)
                    pieces.append(connection.client.seal.seal(frame))
                    intact += pieces[pieces.count - 1]
                }
            }
            let mutations = rng.below(8) == 0 ? 0 : 1 + rng.below(3)
            if mutations > 0 { mutatedStreams += 1 }
            // Whole-frame mutations first: a frame replayed, dropped or moved.
            var stream: [UInt8]
            if mutations > 0 && rng.below(3) == 0 {
                switch rng.below(3) {
                case 0:  // replay one frame later in the stream
                    let i = rng.below(pieces.count)
                    pieces.insert(pieces[i], at: i + 1 + rng.below(pieces.count - i))
                case 1:  // drop one
                    pieces.remove(at: rng.below(pieces.count))
                default:  // swap two
                    if pieces.count > 1 {
                        let i = rng.below(pieces.count - 1)
                        pieces.swapAt(i, i + 1 + rng.below(pieces.count - 1 - i))
                    } else {
                        pieces += pieces
                    }
                }
                stream = pieces.flatMap { $0 }
            } else {
                stream = pieces.flatMap { $0 }
            }
            for _ in 0..<mutations {
                switch rng.below(8) {
                case 0:  // flip bits
                    for _ in 0..<1 + rng.below(3) where !stream.isEmpty {
                        stream[rng.below(stream.count)] ^= 1 << UInt8(rng.below(8))
                    }
                case 1:  // truncate
                    stream.removeLast(rng.below(stream.count + 1))
                case 2:  // insert random bytes
                    stream.insert(contentsOf: rng.bytes(1 + rng.below(8)), at: rng.below(stream.count + 1))
                case 3:  // delete a range
                    let from = rng.below(stream.count + 1)
                    stream.removeSubrange(from..<from + rng.below(stream.count - from + 1))
                case 4:  // overwrite a byte
                    if !stream.isEmpty { stream[rng.below(stream.count)] = rng.byte() }
                case 5:  // the first frame's kind changed (to hello, or unknown)
                    if stream.count > 5 { stream[5] = UInt8(rng.below(4)) }  // the kind byte of the documented header
                case 6:  // a plausible sealed header followed by random bytes
                    stream = header(kind: 2, length: UInt32(17 + rng.below(64))) + rng.bytes(rng.below(120))
                default:  // pure noise
                    stream = rng.bytes(rng.below(200))
                }
            }
            // Feed in random splits: byte by byte, small or large chunks, whole.
            let maxChunk = [1, 8, 64, 512, stream.count + 1, stream.count + 1][rng.below(6)]
            let (got, error) = decode(stream, cuts: randomCuts(stream.count, maxChunk: maxChunk, rng: &rng), with: reference)
            reference.append(intact)
            for _ in sealed {
                if (try? reference.next()) == nil { failures.append("shard \(shard) iteration \(iteration): the reference failed") }
            }
            accepted += got.count
            if error != nil { rejected += 1 }
            if got.count > sealed.count || got != Array(sealed.prefix(got.count)) {
                failures.append(
                    "shard \(shard) iteration \(iteration): \(got.map(\.type)) is not a prefix of what was sealed, \(sealed.map(\.type))")
            }
            if mutations == 0 && allGood && (got != sealed || error != nil) {
                failures.append("shard \(shard) iteration \(iteration): an intact stream was not decoded")
            }
            if failures.count > 10 { break }
        }
        #expect(failures.isEmpty, "\(failures)")
        #expect(mutatedStreams * 8 >= 100_000)
        #expect(accepted > iterations / 4 && rejected > iterations / 2, "accepted \(accepted), rejected \(rejected)")
    }

    /// Over a real TCP connection: garbage, then a hello followed by a frame sealed
    /// under another cluster's keys, each on its own connection; then a good
    /// hello and frame as a control.
    @Test func loopbackSocketRejectsGarbageAndWrongSecret() throws {
        let listener = try Sockets.listen(host: "127.0.0.1", port: 0)
        defer { close(listener) }
        let port = Sockets.localPort(listener)
        let hello = try HelloMessage(nodeID: 9, nodeName: "intruder", address: "127.0.0.1:1")
        let keys = secret.connectionKeys(clientHello: hello, serverHello: serverHello, accepted: true)

        var rng = FrameTestRNG(seed: 99)
        let garbage = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8) + rng.bytes(500)
        let garbageResult = try exchange(port: port, listener: listener, sending: garbage, opener: keys.open)
        #expect(garbageResult.frames.isEmpty && garbageResult.error?.code == .badMagic)

        let wrong = otherSecret.connectionKeys(clientHello: hello, serverHello: serverHello, accepted: false)
        let forged = FrameFormat.helloFrame(hello) + wrong.seal.seal(ReplicationFrame(type: .keyConfirmation))
        let forgedResult = try exchange(port: port, listener: listener, sending: forged, opener: keys.open)
        #expect(forgedResult.frames.map(\.type) == [.hello] && forgedResult.error?.code == .badTag)

        let right = secret.connectionKeys(clientHello: hello, serverHello: serverHello, accepted: false)
        let good = try exchange(
            port: port, listener: listener,
            sending: FrameFormat.helloFrame(hello) + right.seal.seal([ReplicationFrame(type: .keyConfirmation), ReplicationFrame(type: .ping)]),
            opener: keys.open)
        #expect(good.frames.map(\.type) == [.hello, .keyConfirmation, .ping] && good.error == nil)
    }
}

/// Connects to the listener, sends `bytes` and half-closes; the accepted side
/// reads until end of stream or a decoder error: one hello, then frames
/// opened with `opener`, as a replication connection would.
private func exchange(
    port: Int, listener: Int32, sending bytes: [UInt8], opener: FrameOpener
) throws -> (frames: [ReplicationFrame], error: FrameError?) {
    let client = try Sockets.connect(host: "127.0.0.1", port: port)
    defer { close(client) }
    #expect(Sockets.writeAll(client, bytes))
    shutdown(client, Int32(SHUT_WR))
    let server = Sockets.accept(listener)
    #expect(server >= 0)
    defer { close(server) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var decoder = FrameDecoder()
    var frames: [ReplicationFrame] = []
    var chunk = [UInt8](repeating: 0, count: 37)  // small reads: frames arrive split
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(server, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        decoder.append(chunk.prefix(n))
        do {
            while let frame = try decoder.next() {
                frames.append(frame)
                if frame.type == .hello { decoder.startOpening(with: opener) }
            }
        } catch {
            return (frames, error)
        }
    }
    return (frames, nil)
}
