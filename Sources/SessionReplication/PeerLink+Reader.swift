#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import SessionCore
import SystemSupport

// The reader thread: acknowledgements, replies and notices from the peer.
extension PeerLink {
    // MARK: Reader thread

    func runReader(_ connection: SecureConnection, generation: Int) {
        var reader = connection.reader
        var end: ConnectionEnd = .closed
        do {
            for frame in connection.pending { try handle(frame) }
            while true {
                for frame in try reader.frames() { try handle(frame) }
            }
        } catch {
            end = error
        }
        if case .badFrame = end { node.counters.add(\.framesRejected) }
        let unanswered = state.withLock { s -> [UInt64: Question] in
            guard s.generation == generation else { return [:] }
            s.broken = true
            s.readerDone = true
            if case .closed = end {} else { s.lastError = "\(end)" }
            defer { s.questions = [:] }
            return s.questions
        }
        state.broadcast(Self.writerCondition)
        answerUnanswered(unanswered)
    }

    /// The peer is gone: its questions get empty answers, so their requests go on without it.
    func answerUnanswered(_ questions: [UInt64: Question]) {
        for (request, question) in questions {
            switch question {
            case .fetch(let id): node.store.mergeFetchReply(id, request: request, nil)
            case .lookup(let key): node.store.mergeLookupReply(KeyLookupReply(key: key, request: request, answer: .unknown))
            }
        }
    }

    func handle(_ frame: ReplicationFrame) throws(ConnectionEnd) {
        switch frame.type {
        case .hello, .update, .fetch, .snapshotRequest, .ping, .keyLookup, .keyConfirmation:
            throw .protocolViolation("unexpected \(frame.type) frame on an outbound connection")
        case .ack, .fetchReply, .snapshotChunk, .snapshotEnd, .keyLookupReply, .fenced:
            break
        }
        do throws(WireError) {
            switch frame.type {
            case .ack:
                let ack = try AckMessage.decode(frame.payload)
                let caughtUp = state.withLock { s -> Bool in
                    let acked = max(s.ackedSequence, min(ack.sequence, s.lastSequence))
                    if acked > s.ackedSequence { s.lastAckProgress = monotonicNanos() }
                    s.ackedSequence = acked
                    guard s.lagging, s.ackedSequence == s.lastSequence else { return false }
                    s.lagging = false
                    s.laggingSince = nil
                    return true
                }
                state.broadcast(Self.ackCondition)
                if caughtUp { node.logger.notice("peer \(address) caught up; sync writes wait for it again") }
            case .fetchReply:
                let reply = try FetchReply.decode(frame.payload)
                guard state.withLock({ $0.questions.removeValue(forKey: reply.request) }) != nil else { return }
                node.store.mergeFetchReply(reply.id, request: reply.request, reply.update)
            case .keyLookupReply:
                let reply = try KeyLookupReply.decode(frame.payload)
                guard state.withLock({ $0.questions.removeValue(forKey: reply.request) }) != nil else { return }
                node.store.mergeLookupReply(reply)
            case .snapshotChunk:
                let items = try UpdateBatch.decode(frame.payload).items
                if takeReplacingState() { node.owner?.replaceState(from: address) }
                node.merge(items)
            case .snapshotEnd:
                let end = try SnapshotEnd.decode(frame.payload)
                if end.senderReady && takeReplacingState() { node.owner?.replaceState(from: address) }
                state.withLock { $0.transfer = .done(senderReady: end.senderReady, items: end.itemCount) }
            case .fenced:
                node.owner?.receivedFencedNotice(try FencedNotice.decode(frame.payload), from: address.description)
            case .hello, .update, .fetch, .snapshotRequest, .ping, .keyLookup, .keyConfirmation:
                break
            }
        } catch {
            throw .protocolViolation("\(frame.type): \(error)")
        }
    }
}
