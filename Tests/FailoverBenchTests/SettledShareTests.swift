import FailoverBench
import Testing

struct SettledShareTests {
    /// Buckets of `bucketMillis` with these 2xx answers per node (the last one `lastMillis` long, if given).
    private func buckets(_ rows: [[String: Int]], bucketMillis: Int = 500, lastMillis: Int? = nil) -> [TimelineBucket] {
        rows.enumerated().map { i, nodes in
            var counts = OutcomeCounts()
            counts.successes = nodes.values.reduce(0, +)
            let duration = i == rows.count - 1 ? lastMillis ?? bucketMillis : bucketMillis
            return TimelineBucket(startMillis: i * bucketMillis, durationMillis: duration, counts: counts, nodes: nodes)
        }
    }

    private func restart(_ node: String, at millis: Int) -> FaultMarker {
        FaultMarker(action: .restart, node: node, plannedMillis: millis, atMillis: millis)
    }

    private let even: [String: Int] = ["a": 10, "b": 10, "c": 10]
    private let nodes = ["a", "b", "c"]

    @Test func sharesCountFromWhenTheRestartedNodeServedAgainPlusTheSlowStart() throws {
        // 10 s in 500 ms buckets; b restarts at 2.2 s (bucket 4 still has its old process's answers),
        // is gone in buckets 5 and 6, serves again from bucket 7 (3.5 s), ramping up during 1 s of slow start.
        var rows = Array(repeating: even, count: 20)
        rows[5] = ["a": 15, "c": 15]
        rows[6] = ["a": 15, "c": 15]
        rows[7] = ["a": 14, "b": 1, "c": 14]
        rows[8] = ["a": 12, "b": 5, "c": 12]
        for i in 9..<20 { rows[i] = ["a": 10, "b": 5, "c": 5] }
        let share = try #require(
            SettledShare.compute(
                buckets: buckets(rows), markers: [restart("b", at: 2_200)], nodes: nodes, bucketMillis: 500,
                runMillis: 10_000, slowStartMillis: 1_000))
        #expect(share.lastRestart == "restart b")
        #expect(share.servedAgainMillis == 3_500)
        #expect(share.fromMillis == 4_500 && share.toMillis == 10_000)
        #expect(share.answers == ["a": 110, "b": 55, "c": 55])
        #expect(share.shares == ["a": 0.5, "b": 0.25, "c": 0.25])
        #expect(share.maxDeviation == 0.5)
        #expect(share.note == nil)
        // The end of a run that lasted a few milliseconds more than planned reads as the planned end.
        let late = SettledShare.compute(
            buckets: buckets(rows), markers: [restart("b", at: 2_200)], nodes: nodes, bucketMillis: 500,
            runMillis: 10_004, slowStartMillis: 1_000)
        #expect(late?.summary.contains("(4.5 s–10 s; ") == true, "\(late?.summary ?? "")")
        #expect(
            share.summary
                == "a 50.0%, b 25.0%, c 25.0%; at most 50.0% off an even share (4.5 s–10 s; restart b served again at 3.5 s, slow start 1 s)")

        // No slow start: the window starts at 3.5 s and takes the ramp in.
        let early = try #require(
            SettledShare.compute(
                buckets: buckets(rows), markers: [restart("b", at: 2_200)], nodes: nodes, bucketMillis: 500,
                runMillis: 10_000, slowStartMillis: 0))
        #expect(early.fromMillis == 3_500)
        #expect(early.answers == ["a": 136, "b": 61, "c": 81])
        // A settle point inside a bucket starts the window at the next bucket.
        let inside = SettledShare.compute(
            buckets: buckets(rows), markers: [restart("b", at: 2_200)], nodes: nodes, bucketMillis: 500,
            runMillis: 10_000, slowStartMillis: 300)
        #expect(inside?.fromMillis == 4_000)
    }

    @Test func anEvenClusterDeviatesByNothingAndAMissingNodeByOneHundredPercent() throws {
        let flat = try #require(
            SettledShare.compute(
                buckets: buckets(Array(repeating: even, count: 12)), markers: [restart("a", at: 1_000)], nodes: nodes,
                bucketMillis: 500, runMillis: 6_000, slowStartMillis: 0))
        // a never missed a bucket: it served again at its restart.
        #expect(flat.servedAgainMillis == 1_000 && flat.fromMillis == 1_000)
        #expect(flat.maxDeviation == 0)
        #expect(flat.answers == ["a": 100, "b": 100, "c": 100])

        // c was killed at 0.5 s and never restarted: after b's restart it has no share at all.
        var rows = Array(repeating: ["a": 8, "b": 8], count: 12)
        rows[0] = even
        rows[2] = ["a": 16]
        let missing = try #require(
            SettledShare.compute(
                buckets: buckets(rows),
                markers: [FaultMarker(action: .kill, node: "c", plannedMillis: 500, atMillis: 500), restart("b", at: 1_000)],
                nodes: nodes, bucketMillis: 500, runMillis: 6_000, slowStartMillis: 0))
        #expect(missing.servedAgainMillis == 1_500)
        #expect(missing.answers == ["a": 72, "b": 72, "c": 0])
        #expect(missing.shares == ["a": 0.5, "b": 0.5, "c": 0])
        #expect(missing.maxDeviation == 1)
    }

    @Test func aRollingRestartSettlesWhenTheLastNodeToComeBackServesAgain() throws {
        var rows = Array(repeating: even, count: 24)
        rows[3] = ["b": 15, "c": 15]  // a gone (restart at 1 s)
        rows[5] = ["a": 15, "c": 15]  // b gone (restart at 2.2 s)...
        rows[6] = ["a": 15, "c": 15]
        rows[7] = ["a": 15, "c": 15]  // ...until 4 s
        rows[6] = ["a": 15, "c": 15]
        rows[7] = ["a": 30]  // c gone at 3.5 s (restart at 3 s), back at 4 s with b
        let share = try #require(
            SettledShare.compute(
                buckets: buckets(rows),
                markers: [restart("a", at: 1_000), restart("b", at: 2_200), restart("c", at: 3_000)], nodes: nodes,
                bucketMillis: 500, runMillis: 12_000, slowStartMillis: 0))
        #expect(share.servedAgainMillis == 4_000)
        #expect(share.lastRestart == "restart c", "b and c served again at the same time: the later restart")
        #expect(share.fromMillis == 4_000 && share.toMillis == 12_000)
        #expect(share.maxDeviation == 0)
    }

    @Test func tooLittleDataOrANodeThatNeverCameBackGiveANoteInsteadOfANumber() throws {
        var rows = Array(repeating: even, count: 10)
        rows[3] = ["a": 15, "c": 15]  // b restarted at 1 s, gone in bucket 3, back at 2 s
        let data = buckets(rows)
        // From 2 s to 5 s: exactly the 3 s needed.
        let enough = SettledShare.compute(
            buckets: data, markers: [restart("b", at: 1_000)], nodes: nodes, bucketMillis: 500, runMillis: 5_000,
            slowStartMillis: 0)
        #expect(enough?.maxDeviation == 0 && enough?.note == nil)
        // Half a second of slow start leaves 2.5 s.
        let short = try #require(
            SettledShare.compute(
                buckets: data, markers: [restart("b", at: 1_000)], nodes: nodes, bucketMillis: 500, runMillis: 5_000,
                slowStartMillis: 500))
        #expect(short.maxDeviation == nil && short.shares.isEmpty)
        #expect(short.note == "only 2.5 s of data after the settle point at 2.5 s (at least 3 s needed)")
        #expect(short.summary.hasPrefix("not measured: only 2.5 s of data"))
        // A kill after the restart ends the window.
        let cut = try #require(
            SettledShare.compute(
                buckets: data,
                markers: [restart("b", at: 1_000), FaultMarker(action: .kill, node: "a", plannedMillis: 4_000, atMillis: 4_000)],
                nodes: nodes, bucketMillis: 500, runMillis: 5_000, slowStartMillis: 0))
        #expect(cut.toMillis == 4_000 && cut.maxDeviation == nil)
        #expect(cut.note?.contains("the window ends at the next fault, at 4 s") == true)

        var gone = rows
        for i in 3..<10 { gone[i] = ["a": 15, "c": 15] }
        let never = try #require(
            SettledShare.compute(
                buckets: buckets(gone), markers: [restart("b", at: 1_000)], nodes: nodes, bucketMillis: 500,
                runMillis: 5_000, slowStartMillis: 0))
        #expect(never.servedAgainMillis == nil && never.maxDeviation == nil)
        #expect(never.note == "b did not serve again after its restart at 1 s")
    }

    @Test func aShortLastBucketWithoutTheNodeDoesNotMeanItWasGone() {
        var rows = Array(repeating: even, count: 9)
        rows[8] = ["a": 1]
        let share = SettledShare.compute(
            buckets: buckets(rows, lastMillis: 100), markers: [restart("b", at: 500)], nodes: nodes, bucketMillis: 500,
            runMillis: 4_100, slowStartMillis: 0)
        #expect(share?.servedAgainMillis == 500)
        #expect(share?.answers == ["a": 71, "b": 70, "c": 70])
    }

    @Test func runsWithoutARestartOfANodeHaveNoShare() {
        let data = buckets(Array(repeating: even, count: 10))
        let kill = FaultMarker(action: .kill, node: "b", plannedMillis: 1_000, atMillis: 1_000)
        #expect(
            SettledShare.compute(
                buckets: data, markers: [], nodes: nodes, bucketMillis: 500, runMillis: 5_000, slowStartMillis: 0) == nil)
        #expect(
            SettledShare.compute(
                buckets: data, markers: [kill], nodes: nodes, bucketMillis: 500, runMillis: 5_000, slowStartMillis: 0) == nil)
        // A restarted redis-server is not one of the nodes that answer.
        #expect(
            SettledShare.compute(
                buckets: data, markers: [restart("redis", at: 1_000)], nodes: nodes, bucketMillis: 500, runMillis: 5_000,
                slowStartMillis: 0) == nil)
    }
}
