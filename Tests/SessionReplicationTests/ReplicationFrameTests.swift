#if canImport(Glibc)
import Glibc
#endif
import MiniHTTP
import SessionReplication
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

private let secret = Array("sixteen-byte-key-for-the-cluster".utf8)
private let otherSecret = Array("another-cluster-with-its-own-key".utf8)
private let codec = try! FrameCodec(secret: secret)
private let otherCodec = try! FrameCodec(secret: otherSecret)

/// Feeds `chunks` one by one, draining after each; returns the frames and the error, if any.
private func decode(
    _ chunks: [[UInt8]], codec: FrameCodec = codec
) -> (frames: [ReplicationFrame], error: FrameError?) {
    decode(chunks.flatMap { $0 }, cuts: chunks.map(\.count), codec: codec)
}

/// Feeds `bytes` in pieces of the given sizes, draining after each.
private func decode(
    _ bytes: [UInt8], cuts: [Int], codec: FrameCodec = codec
) -> (frames: [ReplicationFrame], error: FrameError?) {
    var decoder = FrameDecoder(codec: codec)
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

private func header(type: UInt8, length: UInt32, version: UInt8 = 1) -> [UInt8] {
    var w = WireWriter()
    for b in "SCR1".utf8 { w.u8(b) }
    w.u8(version)
    w.u8(type)
    w.u32(length)
    return w.bytes
}

private func sampleFrames() -> [ReplicationFrame] {
    var rng = FrameTestRNG(seed: 7)
    return FrameType.allCases.flatMap { type in
        [
            ReplicationFrame(type: type),
            ReplicationFrame(type: type, payload: Array("payload of \(type)".utf8)),
            ReplicationFrame(type: type, payload: rng.bytes(1 + rng.below(3000))),
        ]
    }
}

@Suite struct ReplicationFrameTests {
    @Test func frameTypeRawValuesAreStable() {
        let expected: [FrameType: UInt8] = [
            .hello: 1, .update: 2, .ack: 3, .fetch: 4, .fetchReply: 5, .snapshotRequest: 6, .snapshotChunk: 7,
            .snapshotEnd: 8, .ping: 9, .keyLookup: 10, .keyLookupReply: 11,
        ]
        #expect(FrameType.allCases.count == expected.count)
        for type in FrameType.allCases { #expect(type.rawValue == expected[type]) }
        #expect(FrameType(rawValue: 0) == nil)
    }

    @Test func encodesTheDocumentedLayout() {
        let bytes = codec.encode(ReplicationFrame(type: .ping, payload: Array("hi".utf8)))
        // HMAC-SHA256 computed independently (Python's hmac module).
        let tagHex = "4e052216bbc289baf0c78f6fb78aa1bc7ed06d7cd5d328fc59fcbe5f8a6175ff"
        let tag = stride(from: 0, to: tagHex.count, by: 2).map { i -> UInt8 in
            let s = tagHex.utf8.dropFirst(i).prefix(2)
            return UInt8(String(decoding: s, as: UTF8.self), radix: 16)!
        }
        #expect(bytes == Array("SCR1".utf8) + [1, 9, 0, 0, 0, 2] + Array("hi".utf8) + tag)
    }

    @Test func roundTripsEveryType() throws {
        for frame in sampleFrames() {
            let bytes = codec.encode(frame)
            #expect(bytes.count == FrameCodec.headerByteCount + frame.payload.count + FrameCodec.tagByteCount)
            #expect(bytes[5] == frame.type.rawValue)
            var decoder = FrameDecoder(codec: codec)
            decoder.append(bytes)
            #expect(try decoder.next() == frame)
            #expect(try decoder.next() == nil)
            #expect(decoder.isAtFrameBoundary)
        }
    }

    @Test func anySplitGivesTheSameFramesAsWholeInput() {
        let frames = sampleFrames()
        let stream = frames.flatMap { codec.encode($0) }
        let whole = decode([stream])
        #expect(whole.frames == frames && whole.error == nil)
        let byteByByte = decode(stream.map { [$0] })
        #expect(byteByByte.frames == frames && byteByByte.error == nil)
        var rng = FrameTestRNG(seed: 42)
        for round in 0..<50 {
            let cuts = randomCuts(stream.count, maxChunk: round % 2 == 0 ? 16 : 5000, rng: &rng)
            let split = decode(stream, cuts: cuts)
            #expect(split.frames == frames && split.error == nil, "round \(round)")
        }
    }

    @Test func pipelinedFramesInOneBuffer() throws {
        let frames = (0..<20).map { ReplicationFrame(type: .update, payload: [UInt8]("frame \($0)".utf8)) }
        var decoder = FrameDecoder(codec: codec)
        decoder.append(frames.flatMap { codec.encode($0) } + codec.encode(frames[0]).prefix(7))
        for frame in frames { #expect(try decoder.next() == frame) }
        #expect(try decoder.next() == nil)
        #expect(decoder.bufferedByteCount == 7)
        #expect(!decoder.isAtFrameBoundary)
    }

    @Test func badMagicIsRejectedAtTheFirstWrongByte() {
        var decoder = FrameDecoder(codec: codec)
        decoder.append(Array("G".utf8))
        #expect(throws: FrameError.self) { try decoder.next() }
        var http = FrameDecoder(codec: codec)
        http.append(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(nextError(&http)?.code == .badMagic)
        var scr2 = FrameDecoder(codec: codec)
        scr2.append(Array("SCR".utf8))
        #expect(nextError(&scr2) == nil)  // a correct prefix: still pending
        scr2.append(Array("2".utf8))
        #expect(nextError(&scr2)?.code == .badMagic)
    }

    @Test func unsupportedVersionIsRejectedFromTheHeaderAlone() {
        var decoder = FrameDecoder(codec: codec)
        decoder.append(Array("SCR1".utf8) + [2])
        let error = nextError(&decoder)
        #expect(error?.code == .unsupportedVersion)
        // A whole version-2 frame, correctly tagged, is rejected just the same.
        var full = codec.encode(ReplicationFrame(type: .ping))
        full[4] = 2
        #expect(decode([full]).error?.code == .unsupportedVersion)
    }

    @Test func unknownTypeIsRejectedFromTheHeaderAlone() {
        for type: UInt8 in [0, 12, 200, 255] {
            var decoder = FrameDecoder(codec: codec)
            decoder.append(Array("SCR1".utf8) + [1, type])
            #expect(nextError(&decoder)?.code == .unknownType, "type \(type)")
        }
    }

    @Test func oversizedLengthIsRejectedBeforeThePayloadArrives() throws {
        // Only the header is ever sent: the decoder must not wait for 4 MiB + 1 bytes.
        let limit = FrameCodec.defaultMaxPayloadBytes
        var decoder = FrameDecoder(codec: codec)
        decoder.append(header(type: FrameType.update.rawValue, length: UInt32(limit + 1)))
        #expect(nextError(&decoder)?.code == .oversized)
        var huge = FrameDecoder(codec: codec)
        huge.append(header(type: FrameType.update.rawValue, length: .max))
        #expect(nextError(&huge)?.code == .oversized)
        // Exactly at the limit is fine: the decoder waits for the payload.
        var atLimit = FrameDecoder(codec: codec)
        atLimit.append(header(type: FrameType.update.rawValue, length: UInt32(limit)))
        #expect(nextError(&atLimit) == nil)
        // A smaller configured limit applies to encoding peers and decoders alike.
        let small = try FrameCodec(secret: secret, maxPayloadBytes: 100)
        let over = codec.encode(ReplicationFrame(type: .update, payload: .init(repeating: 1, count: 101)))
        #expect(decode([over], codec: small).error?.code == .oversized)
        let atSmallLimit = small.encode(ReplicationFrame(type: .update, payload: .init(repeating: 1, count: 100)))
        #expect(decode([atSmallLimit], codec: small).frames.count == 1)
    }

    @Test func wrongTagsAreRejected() {
        let frame = ReplicationFrame(type: .update, payload: Array("attribute=42".utf8))
        let good = codec.encode(frame)

        let other = decode([otherCodec.encode(frame)])
        #expect(other.frames.isEmpty && other.error?.code == .badTag)

        for bit in 0..<8 {
            var payloadFlip = good
            payloadFlip[FrameCodec.headerByteCount + 3] ^= 1 << bit
            let p = decode([payloadFlip])
            #expect(p.frames.isEmpty && p.error?.code == .badTag)

            var tagFlip = good
            tagFlip[good.count - 1 - bit * 3] ^= 1 << bit
            let t = decode([tagFlip])
            #expect(t.frames.isEmpty && t.error?.code == .badTag)
        }
        // A valid header type swapped for another valid one is caught by the tag.
        var typeSwap = good
        typeSwap[5] = FrameType.ack.rawValue
        #expect(decode([typeSwap]).error?.code == .badTag)
        // A good frame followed by a bad one: the good one is returned, then the error.
        let mixed = decode([good + otherCodec.encode(frame)])
        #expect(mixed.frames == [frame] && mixed.error?.code == .badTag)
    }

    @Test func truncatedFrameStaysPendingAndNeverYieldsAFrame() throws {
        let bytes = codec.encode(ReplicationFrame(type: .snapshotChunk, payload: Array(0..<100)))
        for cut in 0..<bytes.count {
            var decoder = FrameDecoder(codec: codec)
            decoder.append(bytes.prefix(cut))
            #expect(try decoder.next() == nil)
            #expect(try decoder.next() == nil)
            #expect(decoder.bufferedByteCount == cut)
        }
    }

    @Test func errorsAreSticky() {
        var decoder = FrameDecoder(codec: codec)
        decoder.append(otherCodec.encode(ReplicationFrame(type: .ping)))
        let first = nextError(&decoder)
        #expect(first?.code == .badTag)
        decoder.append(codec.encode(ReplicationFrame(type: .ping)))
        for _ in 0..<3 { #expect(nextError(&decoder) == first) }
        #expect(!decoder.isAtFrameBoundary)
    }

    @Test func shortSecretIsRejected() throws {
        for count in [0, 1, 15] {
            #expect(throws: ClusterSecretError.self) { try FrameCodec(secret: Array(repeating: 7, count: count)) }
        }
        do {
            _ = try FrameCodec(secret: Array(repeating: 7, count: 15))
        } catch {
            #expect(error.description.contains("at least 16"))
        }
        let minimal = try FrameCodec(secret: Array(repeating: 7, count: 16))
        #expect(minimal.maxPayloadBytes == 4 * 1024 * 1024)
    }

    @Test func helloRoundTrips() throws {
        let hello = try HelloMessage(nodeID: 3, nodeName: "node-ç", address: "10.0.0.3:7400")
        #expect(hello.protocolVersion == HelloMessage.currentProtocolVersion)
        #expect(try HelloMessage.decode(hello.encode()) == hello)
        let frames = decode([codec.encode(hello.frame)]).frames
        #expect(frames.count == 1 && frames[0].type == .hello)
        #expect(try HelloMessage.decode(frames[0].payload) == hello)

        let longest = try HelloMessage(nodeID: 1, nodeName: String(repeating: "n", count: 255), address: "[::1]:7400")
        #expect(try HelloMessage.decode(longest.encode()) == longest)
        #expect(throws: WireError.self) {
            try HelloMessage(nodeID: 1, nodeName: String(repeating: "n", count: 256), address: "a")
        }
        // A peer sending a 256-byte name, truncation and trailing bytes are all rejected.
        var w = WireWriter()
        w.u32(1)
        w.string(String(repeating: "n", count: 256))
        w.u32(1)
        w.string("a")
        #expect(throws: WireError.self) { try HelloMessage.decode(w.bytes) }
        #expect(throws: WireError.self) { try HelloMessage.decode(Array(hello.encode().dropLast())) }
        #expect(throws: WireError.self) { try HelloMessage.decode(hello.encode() + [0]) }
    }

    /// Random and mutated streams: nothing crashes or hangs, and every frame the
    /// decoder returns is byte-identical to one really encoded with the secret.
    @Test(arguments: 0..<8) func fuzzNeverAcceptsAForgedFrame(shard: Int) {
        let iterations = 16_000  // × 8 shards = 128,000 streams, 7/8 of them mutated
        var rng = FrameTestRNG(seed: 0x5EED_0000 + UInt64(shard))
        var failures: [String] = []
        var accepted = 0
        var rejected = 0
        var mutatedStreams = 0
        for iteration in 0..<iterations {
            // 1 to 3 frames, most with the cluster secret (`frames`), some with another one.
            var frames: [ReplicationFrame] = []
            var stream: [UInt8] = []
            var allGood = true
            for _ in 0..<1 + rng.below(3) {
                let type = FrameType.allCases[rng.below(FrameType.allCases.count)]
                let size = rng.below(100) < 80 ? rng.below(40) : rng.below(rng.below(100) < 90 ? 400 : 3000)
                let frame = ReplicationFrame(type: type, payload: rng.bytes(size))
                if rng.below(10) == 0 {
                    allGood = false
                    stream += otherCodec.encode(frame)
                } else {
                    frames.append(frame)
                    stream += codec.encode(frame)
                }
            }
            let mutations = rng.below(8) == 0 ? 0 : 1 + rng.below(3)
            if mutations > 0 { mutatedStreams += 1 }
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
                case 5:  // swap the type of the first frame for another valid type
                    if stream.count > 5 { stream[5] = 1 + UInt8(rng.below(FrameType.allCases.count)) }
                case 6:  // a plausible header followed by random bytes
                    stream = header(type: 1 + UInt8(rng.below(11)), length: UInt32(rng.below(64)))
                        + rng.bytes(rng.below(120))
                default:  // pure noise
                    stream = rng.bytes(rng.below(200))
                }
            }
            // Feed in random splits: byte by byte, small or large chunks, whole.
            let maxChunk = [1, 8, 64, 512, stream.count + 1, stream.count + 1][rng.below(6)]
            let (got, error) = decode(stream, cuts: randomCuts(stream.count, maxChunk: maxChunk, rng: &rng))
            accepted += got.count
            if error != nil { rejected += 1 }
            // Encoding is deterministic, so a returned frame equal to one encoded with
            // the secret is byte-identical to it; anything else is a forgery.
            for frame in got where !frames.contains(frame) {
                failures.append("shard \(shard) iteration \(iteration): forged \(frame.type) frame accepted")
            }
            if mutations == 0 && allGood && (got != frames || error != nil) {
                failures.append("shard \(shard) iteration \(iteration): an intact stream was not decoded")
            }
            if failures.count > 10 { break }
        }
        #expect(failures.isEmpty, "\(failures)")
        #expect(mutatedStreams * 8 >= 100_000)
        #expect(accepted > iterations / 4 && rejected > iterations / 2, "accepted \(accepted), rejected \(rejected)")
    }

    /// Over a real TCP connection: garbage, then a frame tagged with another
    /// cluster's secret, each on its own connection; then a good frame as a control.
    @Test func loopbackSocketRejectsGarbageAndWrongSecret() throws {
        let listener = try Sockets.listen(host: "127.0.0.1", port: 0)
        defer { close(listener) }
        let port = Sockets.localPort(listener)
        let hello = try HelloMessage(nodeID: 9, nodeName: "intruder", address: "127.0.0.1:1")

        var rng = FrameTestRNG(seed: 99)
        let garbage = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8) + rng.bytes(500)
        let garbageResult = try exchange(port: port, listener: listener, sending: garbage)
        #expect(garbageResult.frames.isEmpty && garbageResult.error?.code == .badMagic)

        let forged = otherCodec.encode(hello.frame) + codec.encode(ReplicationFrame(type: .ping))
        let forgedResult = try exchange(port: port, listener: listener, sending: forged)
        #expect(forgedResult.frames.isEmpty && forgedResult.error?.code == .badTag)

        let good = try exchange(port: port, listener: listener, sending: codec.encode(hello.frame))
        #expect(good.frames == [hello.frame] && good.error == nil)
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

/// Connects to the listener, sends `bytes` and half-closes; the accepted side
/// reads until end of stream or a decoder error, as a replication connection would.
private func exchange(
    port: Int, listener: Int32, sending bytes: [UInt8]
) throws -> (frames: [ReplicationFrame], error: FrameError?) {
    let client = try Sockets.connect(host: "127.0.0.1", port: port)
    defer { close(client) }
    #expect(Sockets.writeAll(client, bytes))
    shutdown(client, Int32(SHUT_WR))
    let server = accept(listener, nil, nil)
    #expect(server >= 0)
    defer { close(server) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var decoder = FrameDecoder(codec: codec)
    var frames: [ReplicationFrame] = []
    var chunk = [UInt8](repeating: 0, count: 37)  // small reads: frames arrive split
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(server, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        decoder.append(chunk.prefix(n))
        do {
            while let frame = try decoder.next() { frames.append(frame) }
        } catch {
            return (frames, error)
        }
    }
    return (frames, nil)
}
