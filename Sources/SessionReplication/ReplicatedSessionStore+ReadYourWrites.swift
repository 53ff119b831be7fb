#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import SessionCore
import Synchronization
import SystemSupport


// Read-your-writes: read tokens, and catching up with a write made on another node.
extension ReplicatedSessionStore {
    // MARK: Read-your-writes

    /// The key of read tokens' MACs. `ReplicationNode` sets it from the
    /// cluster secret; with it, a token is valid only for its session and
    /// only as this cluster issued it, so a forged one costs no wait and no
    /// fetch. nil: tokens carry no MAC (a store without peers fetches nothing).
    var readTokenKey: HMACKey? {
        get { sinks.withLock { $0.readTokenKey } }
        set { sinks.withLock { $0.readTokenKey = newValue } }
    }

    /// The session's `seen` vector on this node (a `ReadToken`), with its MAC
    /// (`~` and 22 characters) when the store has a `readTokenKey`.
    public func readToken(for id: SessionID) -> String? {
        guard let token = contents.withLock({ $0.sessions[id]?.seen }).map({ ReadToken($0).description }) else {
            return nil
        }
        guard let key = readTokenKey else { return token }
        return token + "~" + base64URLEncode(Array(key.authenticationCode(for: Self.tokenMessage(token, id: id)).prefix(16)))
    }

    /// What a read token's MAC covers: the session ID and the token.
    static func tokenMessage<Token: StringProtocol>(_ token: Token, id: SessionID) -> [UInt8] {
        Array("\(id.rawValue)\n\(token)".utf8)
    }

    /// A read-token cookie's token text and MAC (no MAC without a key; nil when malformed).
    static func splitToken(_ value: String, key: HMACKey?) -> (token: Substring, mac: [UInt8]?)? {
        guard key != nil else { return (value[...], nil) }
        guard let tilde = value.lastIndex(of: "~"), let mac = base64URLDecode(String(value[value.index(after: tilde)...])),
            mac.count == 16
        else { return nil }
        return (value[..<tilde], mac)
    }

    /// Waits for a copy holding every write `token` names: up to
    /// `catchUpPolicy.waitMillis` for the changes to arrive, then asks the
    /// peers (`onFetch`) and waits up to `fetchTimeoutMillis` more, or until
    /// every peer asked has answered. Woken by merges of this session, not
    /// by polling. Concurrent catch-ups of one session share one fetch.
    /// Tokens whose MAC does not verify, malformed tokens and tokens from the
    /// future (beyond the clock's drift limit) are refused at once.
    /// Whether a catch-up that gives up throws `unavailable` instead of letting the request see
    /// an older state than its client saw (`ReplicationNode` sets it in sync mode with a majority quorum: CP).
    package var refusesStaleReads: Bool {
        get { sinks.withLock { $0.refusesStaleReads } }
        set { sinks.withLock { $0.refusesStaleReads = newValue } }
    }

    public func catchUp(_ id: SessionID, to token: String) throws -> Bool {
        let key = readTokenKey
        guard let (text, mac) = Self.splitToken(token, key: key), let wanted = ReadToken(String(text)) else {
            catchUps.withLock { $0.refused += 1 }
            return false
        }
        let limit = clock.nowMillis() + hlc.maxForwardDriftMillis
        guard wanted.stamps.allSatisfy({ $0.millis <= limit }) else { return false }
        func isCurrent() -> Bool { contents.withLock { $0.sessions[id]?.contains(wanted) ?? false } }
        if isCurrent() {  // nothing to wait for: the MAC guards only the waits and fetches below
            catchUps.withLock { $0.current += 1 }
            return true
        }
        if let mac, let key, !key.isValid(mac, for: Self.tokenMessage(text, id: id)) {
            catchUps.withLock { $0.refused += 1 }
            return false
        }
        waiters.withLock { $0.waiting[id, default: 0] += 1 }
        defer {
            waiters.withLock { w in
                w.waiting[id] = w.waiting[id].flatMap { $0 > 1 ? $0 - 1 : nil }
            }
        }
        if waitForMerge(of: id, millis: catchUpPolicy.waitMillis, until: isCurrent) {
            catchUps.withLock { $0.waited += 1 }
            return true
        }
        // Ask the peers, or join the fetch of this session already under way; stop early once
        // every peer asked answered without the changes.
        let (request, leads) = waiters.withLock { w -> (UInt64, Bool) in
            if let running = w.fetching[id], w.fetches[running]?.isAnswered == false {
                w.fetches[running]?.users += 1
                return (running, false)
            }
            w.nextRequest += 1
            w.fetches[w.nextRequest] = Fetch()
            w.fetching[id] = w.nextRequest
            return (w.nextRequest, true)
        }
        defer {
            waiters.withLock { w in
                w.fetches[request]?.users -= 1
                guard w.fetches[request]?.users == 0 else { return }
                w.fetches[request] = nil
                if w.fetching[id] == request { w.fetching[id] = nil }
            }
        }
        if leads {
            let asked = sinks.withLock { $0.onFetch }?(id, request) ?? 0
            waiters.withLock { $0.fetches[request]?.asked = asked }
            notifyMerged(id)  // wakes the catch-ups that joined, should nobody have been asked
        }
        let fetched =
            waitForMerge(of: id, millis: catchUpPolicy.fetchTimeoutMillis) {
                isCurrent() || waiters.withLock { $0.fetches[request]?.isAnswered ?? false }
            } && isCurrent()
        catchUps.withLock { fetched ? ($0.fetched += 1) : ($0.gaveUp += 1) }
        // Every peer asked answered without it: the session is gone everywhere (expired, invalidated),
        // not out of reach. Refuse only when some did not answer, or none could be asked.
        let unanswered = waiters.withLock { w in
            guard let fetch = w.fetches[request] else { return true }
            return !fetch.isAnswered || fetch.asked == 0
        }
        if !fetched && refusesStaleReads && unanswered {
            throw SessionStoreError(
                .unavailable,
                "this node does not have the session as the client last saw it, and no peer sent it within \(catchUpPolicy.fetchTimeoutMillis) ms")
        }
        return fetched
    }

    /// Sleeps until `done()` or the deadline, re-checking after each merge of session `id`.
    func waitForMerge(of id: SessionID, millis: Int64, until done: () -> Bool) -> Bool {
        let deadline = monotonicNanos() + UInt64(max(0, millis)) * 1_000_000
        var seenMerges = waiters.withLock { $0.merges }
        while true {
            if done() { return true }
            let (woken, merges) = waiters.wait(
                until: deadline, for: { $0.merges != seenMerges }, then: { w, woken in (woken, w.merges) })
            if !woken { return done() }
            seenMerges = merges
        }
    }

    /// Wakes the `catchUp` calls waiting for session `id`.
    func notifyMerged(_ id: SessionID, fetchReply request: UInt64? = nil) {
        let wake = waiters.withLock { w -> Bool in
            if let request { w.fetches[request]?.replies += 1 }
            guard w.waiting[id] != nil else { return false }
            w.merges &+= 1
            return true
        }
        if wake { waiters.broadcast() }
    }

    /// What `catchUp` has done so far.
    public var catchUpCounts: CatchUpCounts { catchUps.withLock { $0 } }
}
