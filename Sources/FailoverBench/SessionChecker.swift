/// The class of one answer (one attempt: a retry is an answer of its own).
/// Every attempt the benchmark completes is counted under exactly one kind.
public enum AnswerKind: String, Sendable, Codable, CaseIterable {
    /// A 2xx answer consistent with everything the user was told before.
    case success
    /// No usable answer: a transport error (connect, reset, close), the
    /// per-request timeout, a non-2xx status, or a 2xx write without a count.
    case error
    /// The session is gone: see `SessionChecker`.
    case lostSession
    /// A confirmed increment is missing: see `SessionChecker`.
    case lostUpdate
    /// An increment was applied more than once: see `SessionChecker`.
    case duplicate
    /// A read shows less than a confirmed write: see `SessionChecker`.
    case staleRead

    /// The four correctness anomalies (not success, not error).
    public var isAnomaly: Bool { self != .success && self != .error }
}

/// Judges one user's answers against what the server confirmed before.
///
/// State: the expectation `e`, the last count the server confirmed (0 before
/// the first answer); `u`, the writes whose every attempt failed and that no
/// count has accounted for yet (the server may or may not have applied each,
/// now or later: a write that timed out may still be running on a node); and
/// whether a read already reported the session lost. With `c` the count in a 2xx answer:
///
/// A **write** (the increment) answering
/// - no count, or a count below 1: **error** (u grows by one);
/// - `e+1 ≤ c ≤ e+1+u`: **success**; `c−e−1` of the `u` writes are now
///   accounted for, the others may still come;
/// - after a read reported the session lost: `c = 1` is **success** (the loss
///   was already counted), `c ≥ 2` a **duplicate**;
/// - otherwise `c = 1` (with `e ≥ 1`): **lost session** — a fresh session;
/// - `2 ≤ c ≤ e`: **lost update** — e.g. e = 5, the increment answers 5;
/// - `c > e+1+u` (so `c ≥ e+2`): **duplicate** — an increment applied twice
///   (all `u` writes are then taken as applied).
///   An idempotent retry that the server de-duplicates answers the same count
///   as the lost first attempt would have, so it is a success, not a duplicate.
///
/// So a write whose outcome is unknown (sent without an Idempotency-Key and
/// failed, or failed on every attempt) allows one more increment, once, whenever
/// it shows: a count of n or n+1 where n was expected. It never excuses a
/// count below the expectation (a lost update), nor a second extra increment.
///
/// After every write with a count, the expectation becomes what the server
/// said (`e = c`): each divergence is counted once, where it shows.
///
/// A **read** answering (a missing count reads as 0)
/// - `e ≤ c ≤ e+u`: **success** (`c > e` accounts for `c−e` failed writes: `e = c`);
/// - `c = 0` with `e ≥ 1`: **lost session**, reported once: further empty
///   reads are successes until a write answers (the expectation stays, so a
///   session that comes back is not mistaken for a duplicate);
/// - `1 ≤ c < e`: **stale read** — the expectation stays, since a lagging
///   replica does not mean the data is gone (if it is, the next write shows
///   it as a lost update);
/// - `c > e+u`: **success**: reads do not judge counts above the
///   expectation; the next write does (as a duplicate);
/// - a negative count: **error**.
public struct SessionChecker: Sendable, Equatable {
    /// The last count the server confirmed.
    public private(set) var expected = 0
    /// Writes that failed on every attempt and that no count has accounted for yet.
    public private(set) var unconfirmedWrites = 0
    /// A read reported this session lost and no write has answered since.
    public private(set) var lossReported = false
    /// Since the session began (a lost session starts a new one): the writes the server
    /// answered with a count, and those whose outcome is unknown. Once every node agrees,
    /// the session's count must lie in `confirmedIncrements...confirmedIncrements + unknownIncrements`
    /// (`ConvergenceCheck`).
    public private(set) var confirmedIncrements = 0
    public private(set) var unknownIncrements = 0

    public init() {}

    /// Classifies a 2xx answer to a write.
    public mutating func checkWrite(count: Int?) -> AnswerKind {
        guard let c = count, c >= 1 else {
            unconfirmedWrites += 1
            unknownIncrements += 1
            return .error
        }
        let e = expected
        let kind: AnswerKind
        if c >= e + 1 && c <= e + 1 + unconfirmedWrites {
            kind = .success
            unconfirmedWrites -= c - e - 1
        } else if lossReported {
            kind = c == 1 ? .success : .duplicate
        } else if c == 1 {
            kind = .lostSession
        } else if c <= e {
            kind = .lostUpdate
        } else {
            kind = .duplicate
        }
        if kind == .duplicate { unconfirmedWrites = 0 }
        if kind == .lostSession || (lossReported && c == 1) {
            (confirmedIncrements, unknownIncrements) = (1, 0)  // a new session, holding this write
        } else {
            confirmedIncrements += 1
        }
        expected = c
        lossReported = false
        return kind
    }

    /// Classifies a 2xx answer to a read.
    public mutating func checkRead(count: Int?) -> AnswerKind {
        let c = count ?? 0
        let e = expected
        if c < 0 { return .error }
        if c >= e && c <= e + unconfirmedWrites {
            if c > e {
                expected = c
                unconfirmedWrites -= c - e
            }
            lossReported = false
            return .success
        }
        if c == 0 {
            if lossReported { return .success }
            lossReported = true
            return .lostSession
        }
        return c < e ? .staleRead : .success
    }

    /// A write failed on every attempt: the server may or may not have applied it.
    public mutating func writeFailed() {
        unconfirmedWrites += 1
        unknownIncrements += 1
    }
}
