import Logging
import SessionCore
import SessionReplication
import SystemSupport
import Testing


private func sampleUpdate(_ node: UInt32 = 1) throws -> SessionUpdate {
    var session = ReplicatedSession(createdAtMillis: 1_000, at: HLCStamp(millis: 1_000, node: node))
    _ = session.set("user", json("\"ada\""), at: HLCStamp(millis: 1_001, node: node))
    _ = try session.increment("count", by: 3, at: HLCStamp(millis: 1_002, node: node))
    let record = IdempotencyRecord(
        key: "k-1", fingerprint: "POST /api/counter",
        response: StoredResponse(status: 200, headers: [["Content-Type", "application/json"]], body: json("{}")),
        ttlMillis: 60_000)
    return SessionUpdate(id: SessionID.generate(), session: session, idempotencyRecord: record)
}

private func sampleRecord() -> ReplicatedRecord {
    ReplicatedRecord(
        record: IdempotencyRecord(
            key: "k-2", fingerprint: "f", response: StoredResponse(status: 201, headers: [], body: json("ok")),
            ttlMillis: 1_000),
        expiresAtMillis: 5_000)
}

@Suite struct ReplicationMessagesTests {
    @Test func batchesRoundTripWithSessionsAndRecords() throws {
        let batch = UpdateBatch(sequence: 42, items: [.session(try sampleUpdate()), .record(sampleRecord())])
        #expect(try UpdateBatch.decode(batch.encode()) == batch)
        let empty = UpdateBatch(sequence: 0, items: [])
        #expect(try UpdateBatch.decode(empty.encode()) == empty)
        // Items encoded once and concatenated decode the same as a batch encoded whole.
        let items = batch.items.flatMap(\.encoded)
        #expect(UpdateBatch.encode(sequence: 42, itemCount: 2, encodedItems: items) == batch.encode())
    }

    @Test func smallMessagesRoundTrip() throws {
        #expect(try AckMessage.decode(AckMessage(sequence: .max).encode()) == AckMessage(sequence: .max))
        let id = SessionID.generate()
        #expect(try FetchRequest.decode(FetchRequest(id: id, request: 9).encode()) == FetchRequest(id: id, request: 9))
        let absent = FetchReply(id: id, request: 1, update: nil)
        #expect(try FetchReply.decode(absent.encode()) == absent)
        var update = try sampleUpdate()
        update.id = id
        let present = FetchReply(id: id, request: .max, update: update)
        #expect(try FetchReply.decode(present.encode()) == present)
        let end = SnapshotEnd(itemCount: 10_000, senderReady: true)
        #expect(try SnapshotEnd.decode(end.encode()) == end)
        for onlyIfReady in [false, true] {
            #expect(try SnapshotRequest.decode(SnapshotRequest(onlyIfReady: onlyIfReady).encode()).onlyIfReady == onlyIfReady)
        }
        let notice = FencedNotice(incarnation: .max, reason: "silent for 1000 ms")
        #expect(try FencedNotice.decode(notice.encode()) == notice)
    }

    @Test func aFencedNoticeKeepsItsReasonShortAndItsBytesChecked() throws {
        // A long reason is cut at a character boundary, within the limit the decoder enforces.
        let long = FencedNotice(incarnation: 1, reason: String(repeating: "é", count: 400))
        #expect(long.reason.utf8.count <= FencedNotice.maxReasonBytes && long.reason.utf8.count >= FencedNotice.maxReasonBytes - 1)
        #expect(try FencedNotice.decode(long.encode()) == long)
        var w = WireWriter()
        w.u64(1)
        w.string(String(repeating: "x", count: FencedNotice.maxReasonBytes + 1))
        #expect(throws: WireError.self) { try FencedNotice.decode(w.bytes) }
        #expect(throws: WireError.self) { try FencedNotice.decode(Array(notice(1).prefix(7))) }
        #expect(throws: WireError.self) { try FencedNotice.decode(notice(1) + [0]) }
        #expect(throws: WireError.self) { try SnapshotRequest.decode([2]) }
        #expect(throws: WireError.self) { try SnapshotRequest.decode([]) }
    }

    private func notice(_ incarnation: UInt64) -> [UInt8] { FencedNotice(incarnation: incarnation, reason: "r").encode() }

    @Test func keyLookupsAndEveryKindOfAnswerRoundTrip() throws {
        let lookup = KeyLookup(key: "k-2", request: 77)
        #expect(try KeyLookup.decode(lookup.encode()) == lookup)
        let answers: [KeyLookupReply.Answer] = [
            .unknown, .inProgress(claimedAt: HLCStamp(millis: 9, counter: 3, node: 4)),
            .completed(sampleRecord(), session: nil), .completed(sampleRecord(), session: try sampleUpdate()),
        ]
        for answer in answers {
            let reply = KeyLookupReply(key: "k-2", request: .max, answer: answer)
            #expect(try KeyLookupReply.decode(reply.encode()) == reply)
            #expect(throws: WireError.self) { try KeyLookupReply.decode(reply.encode() + [0]) }
        }
        // A record for another key is refused; so is an unknown answer kind, and a key over the limit.
        let wrongKey = KeyLookupReply(key: "k-other", request: 1, answer: .completed(sampleRecord(), session: nil))
        #expect(throws: WireError.self) { try KeyLookupReply.decode(wrongKey.encode()) }
        var unknownKind = KeyLookupReply(key: "k", request: 1, answer: .unknown).encode()
        unknownKind[unknownKind.count - 1] = 3
        #expect(throws: WireError.self) { try KeyLookupReply.decode(unknownKind) }
        let long = String(repeating: "k", count: SessionUpdate.maxNameBytes + 1)
        #expect(throws: WireError.self) { try KeyLookup.decode(KeyLookup(key: long, request: 1).encode()) }
    }

    /// Mutated lookup replies decode to an error or to a reply that encodes back to itself.
    @Test func fuzzedLookupRepliesDecodeToAnErrorOrAConsistentReply() throws {
        let base = KeyLookupReply(key: "k-2", request: 5, answer: .completed(sampleRecord(), session: try sampleUpdate()))
            .encode()
        var rng = SplitMix64(seed: 11)
        var decoded = 0
        for _ in 0..<10_000 {
            var bytes = base
            if rng.below(2) == 0 {
                for _ in 0...rng.below(4) { bytes[rng.below(bytes.count)] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
            } else {
                bytes = Array(bytes[..<rng.below(bytes.count)])
            }
            if let reply = try? KeyLookupReply.decode(bytes) {
                decoded += 1
                #expect(try KeyLookupReply.decode(reply.encode()) == reply)
            }
        }
        #expect(decoded < 10_000)
    }

    @Test func aFetchReplyForAnotherSessionIsRejected() throws {
        let reply = FetchReply(id: SessionID.generate(), request: 2, update: try sampleUpdate())
        #expect(throws: WireError.self) { try FetchReply.decode(reply.encode()) }
    }

    @Test func trailingTruncatedAndUnknownBytesAreRejected() throws {
        let batch = UpdateBatch(sequence: 7, items: [.session(try sampleUpdate())]).encode()
        #expect(throws: WireError.self) { try UpdateBatch.decode(batch + [0]) }
        for cut in 0..<batch.count {
            #expect(throws: WireError.self) { try UpdateBatch.decode(Array(batch[..<cut])) }
        }
        var unknownKind = UpdateBatch(sequence: 1, items: [.record(sampleRecord())]).encode()
        unknownKind[12] = 9  // the first item's kind byte
        #expect(throws: WireError.self) { try UpdateBatch.decode(unknownKind) }
        var lyingCount = batch
        lyingCount[8..<12] = [0x7F, 0xFF, 0xFF, 0xFF]
        #expect(throws: WireError.self) { try UpdateBatch.decode(lyingCount) }
        #expect(throws: WireError.self) { try AckMessage.decode([1, 2, 3]) }
        #expect(throws: WireError.self) { try SnapshotEnd.decode(SnapshotEnd(itemCount: 1, senderReady: true).encode() + [0]) }
        var badBool = SnapshotEnd(itemCount: 1, senderReady: false).encode()
        badBool[8] = 2
        #expect(throws: WireError.self) { try SnapshotEnd.decode(badBool) }
    }

    /// Random byte flips, cuts and splices never crash the decoder: each
    /// mutated payload is an error or decodes to a batch that encodes back to itself.
    @Test func fuzzedBatchesDecodeToAnErrorOrAConsistentBatch() throws {
        let base = UpdateBatch(
            sequence: 3, items: [.session(try sampleUpdate(1)), .record(sampleRecord()), .session(try sampleUpdate(2))]
        ).encode()
        var rng = SplitMix64(seed: 2026)
        var decoded = 0
        for _ in 0..<20_000 {
            var bytes = base
            switch rng.below(3) {
            case 0:
                for _ in 0...rng.below(4) { bytes[rng.below(bytes.count)] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
            case 1:
                bytes = Array(bytes[..<rng.below(bytes.count)])
            default:
                let at = rng.below(bytes.count)
                bytes.insert(contentsOf: (0..<rng.below(8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
            }
            if let batch = try? UpdateBatch.decode(bytes) {
                decoded += 1
                #expect(try UpdateBatch.decode(batch.encode()) == batch)
            }
        }
        #expect(decoded < 20_000)  // most mutations are caught
    }

    @Test func peerAddressesParse() throws {
        #expect(PeerAddress("127.0.0.1:7401") == PeerAddress(host: "127.0.0.1", port: 7401))
        #expect(PeerAddress("[::1]:7401") == PeerAddress(host: "::1", port: 7401))
        #expect(PeerAddress(host: "::1", port: 7401).description == "[::1]:7401")
        for bad in ["", "127.0.0.1", "127.0.0.1:", ":7401", "127.0.0.1:0", "127.0.0.1:65536", "h:x", "a b:1"] {
            #expect(PeerAddress(bad) == nil, "\(bad)")
        }
        #expect(
            try PeerAddress.list("127.0.0.1:1, 127.0.0.1:2,[::1]:3") == [
                PeerAddress(host: "127.0.0.1", port: 1), PeerAddress(host: "127.0.0.1", port: 2),
                PeerAddress(host: "::1", port: 3),
            ])
        #expect(throws: ReplicationConfigurationError.self) { try PeerAddress.list("127.0.0.1:1,nope") }
    }

    @Test func settingsOutOfRangeAreRefusedWithTheirName() throws {
        let secret = Array("sixteen-bytes-secret".utf8)
        try ReplicationConfiguration(nodeName: "n", secret: secret).validate()
        let bad: [(String, ReplicationConfiguration)] = [
            ("relayWindowMillis", ReplicationConfiguration(nodeName: "n", secret: secret, relayWindowMillis: -1)),
            ("syncTimeoutMillis", ReplicationConfiguration(nodeName: "n", secret: secret, syncTimeoutMillis: 0)),
            ("pingIntervalMillis", ReplicationConfiguration(nodeName: "n", secret: secret, pingIntervalMillis: .max)),
            ("reconnectBackoffMillis.max",
             ReplicationConfiguration(nodeName: "n", secret: secret, reconnectBackoffMillis: (500, 100))),
            ("snapshotChunkBytes", ReplicationConfiguration(nodeName: "n", secret: secret, snapshotChunkBytes: 8 << 20)),
            ("maxQueueBytes", ReplicationConfiguration(nodeName: "n", secret: secret, maxQueueBytes: 0)),
        ]
        for (name, configuration) in bad {
            let error = #expect(throws: ReplicationConfigurationError.self) { try configuration.validate() }
            #expect(error?.message.hasPrefix(name + " must be") == true, "\(error?.message ?? "no error")")
        }
        // ReplicationNode refuses it before binding anything.
        let store = ReplicatedSessionStore(node: ReplicationConfiguration.nodeID(for: "n"))
        #expect(throws: ReplicationConfigurationError.self) {
            _ = try ReplicationNode(store: store, configuration: bad[0].1, logger: Logger(label: "test"))
        }
    }

    @Test func nodeIDsAreStableNonZeroHashesOfTheName() {
        #expect(ReplicationConfiguration.nodeID(for: "node1") == ReplicationConfiguration.nodeID(for: "node1"))
        #expect(ReplicationConfiguration.nodeID(for: "node1") != ReplicationConfiguration.nodeID(for: "node2"))
        // FNV-1a 32 of "a" (published test vector).
        #expect(ReplicationConfiguration.nodeID(for: "a") == 0xE40C_292C)
        let ids = Set((1...1000).map { ReplicationConfiguration.nodeID(for: "node-\($0)") })
        #expect(ids.count == 1000 && !ids.contains(0))
    }

    @Test func readTokensRoundTripAndRefuseGarbage() throws {
        let seen: [UInt32: HLCStamp] = [
            7: HLCStamp(millis: 5, counter: 1, node: 7), 2: HLCStamp(millis: 9, counter: 0, node: 2),
        ]
        let token = ReadToken(seen)
        #expect(token.description == "9.0.2_5.1.7")
        #expect(ReadToken(token.description) == token)
        for bad in ["", "_", "9.0.2_", "9.0.2__5.1.7", "9.0.2;5.1.7", String(repeating: "1.0.1_", count: 64) + "1.0.1"] {
            #expect(ReadToken(bad) == nil, "\(bad)")
        }
    }

    @Test func readTokensParseStrictly() {
        let stamp = HLCStamp(millis: 1_795_519_412_063, counter: 4, node: 104_193_830)
        #expect(HLCStamp(token: "1795519412063.4.104193830") == stamp)
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "-1.0.1", "1..2", "1.2.", "1.4294967296.1", "99999999999999999999.0.1"] {
            #expect(HLCStamp(token: bad) == nil, "\(bad)")
        }
    }
}
