import FailoverBench
import Testing

struct FaultPlanTests {
    @Test(arguments: [
        ("kill:node2@10s", Fault(kind: .kill, node: "node2", atMillis: 10_000)),
        ("restart:node2@20s", Fault(kind: .restart, node: "node2", atMillis: 20_000)),
        ("stop:node3@12s-15s", Fault(kind: .stop, node: "node3", atMillis: 12_000, untilMillis: 15_000)),
        ("kill:n-1.a_b@1.5s", Fault(kind: .kill, node: "n-1.a_b", atMillis: 1_500)),
        ("kill:node1@500ms", Fault(kind: .kill, node: "node1", atMillis: 500)),
        ("kill:node1@7", Fault(kind: .kill, node: "node1", atMillis: 7_000)),
        ("restart:node1@2m", Fault(kind: .restart, node: "node1", atMillis: 120_000)),
        ("stop:x@0s-250ms", Fault(kind: .stop, node: "x", atMillis: 0, untilMillis: 250)),
    ])
    func goodFaultsParse(spec: String, expected: Fault) throws {
        #expect(try Fault.parse(spec) == expected)
        // The canonical spelling parses back to the same fault.
        #expect(try Fault.parse(expected.description) == expected)
    }

    @Test(arguments: [
        ("node2@10s", "expected ACTION:NODE@TIME"),
        ("pause:node2@10s", "unknown action 'pause'"),
        ("kill:node2", "missing @TIME"),
        ("kill:@10s", "missing node name"),
        ("kill:node 2@10s", "may only hold"),
        ("kill:node2@", "is not a time"),
        ("kill:node2@ten", "is not a time"),
        ("kill:node2@10h", "is not a time"),
        ("kill:node2@-1s", "is not a time"),
        ("kill:node2@10s-12s", "only stop takes a window"),
        ("stop:node3@12s", "stop needs a window"),
        ("stop:node3@15s-12s", "must end after it starts"),
        ("stop:node3@12s-x", "is not a time"),
        ("kill:node2@99999s", "is not a time"),
        ("partition:node1|node2", "missing @START-END"),
        ("partition:node1|node2@10s", "needs a window START-END"),
        ("partition:node1|node2@15s-10s", "must end after it starts"),
        ("partition:node1||node2@10s-15s", "an empty node name"),
        ("partition:node1|node1@10s-15s", "'node1' is named twice"),
        ("partition:node 1|node2@10s-15s", "may only hold"),
        ("isolate:node1,node2@10s-15s", "isolate takes one node"),
        ("isolate:node1@ten-15s", "'ten' is not a time"),
        ("slow-link:node1-node2@10s-15s", "expected @START-END:LATENCY"),
        ("slow-link:node1@10s-15s:200ms", "is not two nodes"),
        ("slow-link:node1-node2-node3@10s-15s:200ms", "is not two nodes"),
        ("slow-link:node1-node1@10s-15s:200ms", "two different nodes"),
        ("slow-link:node1-node2@10s:200ms", "needs a window START-END"),
        ("slow-link:node1-node2@15s-10s:200ms", "must end after it starts"),
        ("slow-link:node1-node2@10s-15s:fast", "is not a latency"),
        ("slow-link:node1-node2@10s-15s:11s", "is not a latency"),
        ("slow-link:node1-node2@10s-15s:200ms/5", "is not a loss"),
        ("slow-link:node1-node2@10s-15s:200ms/101%", "is not a loss"),
        ("slow-link:node1-node2@10s-15s:0ms", "a latency or a loss above 0"),
    ])
    func badFaultsSayWhy(spec: String, reason: String) {
        #expect {
            _ = try Fault.parse(spec)
        } throws: { error in
            guard let error = error as? FaultPlanError else { return false }
            return error.spec == spec && error.reason.contains(reason) && error.description.contains(spec)
        }
    }

    @Test func timesForTheCommandLine() {
        #expect(parseBenchTimeMillis("30s") == 30_000)
        #expect(parseBenchTimeMillis("30") == 30_000)
        #expect(parseBenchTimeMillis("0.25s") == 250)
        #expect(parseBenchTimeMillis("1m") == 60_000)
        #expect(parseBenchTimeMillis("90ms") == 90)
        for bad in ["", "s", "1.2.3s", "-1s", "1h", "25h", " 1s"] { #expect(parseBenchTimeMillis(bad) == nil, "\(bad)") }
    }

    @Test func stepsAreInTimeOrderAndAStopEndsWithAResume() throws {
        let plan = try FaultPlan(parsing: ["restart:node2@20s", "kill:node2@10s", "stop:node3@12s-15s"])
        #expect(plan.steps == [
            FaultStep(atMillis: 10_000, action: .kill, node: "node2"),
            FaultStep(atMillis: 12_000, action: .stop, node: "node3"),
            FaultStep(atMillis: 15_000, action: .resume, node: "node3"),
            FaultStep(atMillis: 20_000, action: .restart, node: "node2"),
        ])
    }

    @Test func overlappingStopsOfOneNodeAndFaultsBeyondTheRunAreRejected() throws {
        #expect(throws: FaultPlanError.self) { try FaultPlan(parsing: ["stop:n@1s-5s", "stop:n@4s-6s"]) }
        _ = try FaultPlan(parsing: ["stop:n@1s-5s", "stop:m@4s-6s", "stop:n@5s-6s"])
        let plan = try FaultPlan(parsing: ["kill:n@10s", "stop:m@12s-31s"])
        #expect(throws: FaultPlanError.self) { try plan.validate(durationMillis: 30_000) }
        try plan.validate(durationMillis: 32_000)
        let target = try BenchTarget(baseURL: "http://127.0.0.1:8080")
        #expect(throws: BenchConfigurationError.self) {
            try BenchConfiguration(target: target, durationSeconds: 30, faults: plan).validate()
        }
    }
}

struct RollingFaultTests {
    @Test(arguments: [
        ("rolling@10s:6s", Fault.rolling(atMillis: 10_000, gapMillis: 6_000)),
        ("rolling@0:500ms", Fault.rolling(atMillis: 0, gapMillis: 500)),
        ("rolling@1.5s:2.25s", Fault.rolling(atMillis: 1_500, gapMillis: 2_250)),
        ("rolling:node3,node1@1m:30s", Fault.rolling(atMillis: 60_000, gapMillis: 30_000, nodes: ["node3", "node1"])),
        ("rolling:a.b_c-1@2s:1s", Fault.rolling(atMillis: 2_000, gapMillis: 1_000, nodes: ["a.b_c-1"])),
    ])
    func goodRollingSpecsParse(spec: String, expected: Fault) throws {
        let fault = try Fault.parse(spec)
        #expect(fault == expected)
        #expect(fault.kind == .rolling && fault.node == "" && fault.untilMillis == nil)
        #expect(try Fault.parse(fault.description) == fault, "\(fault.description) parses back")
    }

    @Test(arguments: [
        ("rolling", "missing @START:GAP"),
        ("rolling@10s", "missing the gap between two restarts"),
        ("rolling@10s:", "'' is not a time"),
        ("rolling@10s:0s", "must be more than 0"),
        ("rolling@10s:0ms", "must be more than 0"),
        ("rolling@10s:-6s", "is not a time"),
        ("rolling@10s:six", "'six' is not a time"),
        ("rolling@ten:6s", "'ten' is not a time"),
        ("rolling@10s-12s:6s", "is not a time"),
        ("rolling@10s:6s:2s", "expected rolling@START:GAP"),
        ("rolling:@10s:6s", "missing node names"),
        ("rolling:node1,,node2@10s:6s", "an empty node name"),
        ("rolling:node1,node1@10s:6s", "'node1' is listed twice"),
        ("rolling:node 1@10s:6s", "may only hold"),
        ("rolling:node1", "missing @START:GAP"),
        ("rollingnode1@10s:6s", "expected rolling@START:GAP"),
        ("roll:node1@10s", "unknown action 'roll' (expected kill, restart, stop, rolling, partition, isolate or slow-link)"),
    ])
    func badRollingSpecsSayWhy(spec: String, reason: String) {
        #expect {
            _ = try Fault.parse(spec)
        } throws: { error in
            guard let error = error as? FaultPlanError else { return false }
            return error.spec == spec && error.reason.contains(reason)
        }
    }

    @Test func aRollingRestartExpandsIntoOneRestartPerNodeInTheClustersOrder() throws {
        let plan = try FaultPlan(parsing: ["kill:node-2@2s", "rolling@10s:6s", "restart:node-2@5s"])
        // Before the nodes are known there is nothing to restart.
        #expect(plan.unresolvedRolling == [Fault.rolling(atMillis: 10_000, gapMillis: 6_000)])
        #expect(plan.steps.map(\.atMillis) == [2_000, 5_000])
        let resolved = plan.resolvingRolling(nodes: ["node-1", "node-2", "node-3"])
        #expect(resolved.unresolvedRolling.isEmpty)
        #expect(resolved.faults.map(\.description) == [
            "kill:node-2@2s", "rolling:node-1,node-2,node-3@10s:6s", "restart:node-2@5s",
        ])
        #expect(resolved.steps == [
            FaultStep(atMillis: 2_000, action: .kill, node: "node-2"),
            FaultStep(atMillis: 5_000, action: .restart, node: "node-2"),
            FaultStep(atMillis: 10_000, action: .restart, node: "node-1"),
            FaultStep(atMillis: 16_000, action: .restart, node: "node-2"),
            FaultStep(atMillis: 22_000, action: .restart, node: "node-3"),
        ])
        // Named nodes keep their order, and are not replaced by the cluster's.
        let named = try FaultPlan(parsing: ["rolling:node3,node1@1s:500ms"]).resolvingRolling(nodes: ["x", "y"])
        #expect(named.steps == [
            FaultStep(atMillis: 1_000, action: .restart, node: "node3"),
            FaultStep(atMillis: 1_500, action: .restart, node: "node1"),
        ])
        // The CLI's node names (node3 → node-3) reach the listed nodes too.
        let mapped = named.mappingNodes { "node-" + $0.dropFirst(4) }
        #expect(mapped.steps.map(\.node) == ["node-3", "node-1"])
        #expect(mapped.faults.map(\.description) == ["rolling:node-3,node-1@1s:0.5s"])
        // Interleaved with another plan's steps in time order; ties keep the plan's order.
        let tied = try FaultPlan(parsing: ["rolling:a,b@1s:1s", "stop:c@2s-3s"])
        #expect(tied.steps.map { "\($0.action.rawValue) \($0.node)@\($0.atMillis)" } == [
            "restart a@1000", "restart b@2000", "stop c@2000", "resume c@3000",
        ])
    }

    @Test func aRollingRestartMustEndInsideTheRun() throws {
        func reason(_ plan: FaultPlan, _ duration: Int, clusterSize: Int? = nil) -> String? {
            do {
                try plan.validate(durationMillis: duration, clusterSize: clusterSize)
                return nil
            } catch {
                return error.reason
            }
        }
        let rolling = try FaultPlan(parsing: ["rolling@10s:6s"])
        // 3 nodes: restarts at 10, 16 and 22 s.
        #expect(reason(rolling, 23_000, clusterSize: 3) == nil)
        #expect(reason(rolling, 22_000, clusterSize: 3)?.contains("the last of its 3 restarts would come at 22s") == true)
        #expect(reason(rolling.resolvingRolling(nodes: ["a", "b", "c"]), 22_000) != nil)
        #expect(reason(rolling.resolvingRolling(nodes: ["a", "b", "c"]), 22_001) == nil)
        #expect(reason(rolling.resolvingRolling(nodes: ["a", "b"]), 17_000) == nil)
        // Without the nodes: only the first restart can be checked.
        #expect(reason(rolling, 10_001) == nil)
        #expect(reason(rolling, 10_000) != nil)
        #expect(reason(rolling, 30_000, clusterSize: 0)?.contains("no node to restart") == true)
        #expect(reason(rolling.resolvingRolling(nodes: []), 30_000)?.contains("no node to restart") == true)

        // The runner refuses a rolling restart whose nodes it does not know, and one that overruns.
        let target = try BenchTarget(baseURL: "http://127.0.0.1:8080")
        #expect {
            try BenchConfiguration(target: target, durationSeconds: 30, faults: rolling).validate()
        } throws: { error in
            "\(error)".contains("the nodes to restart are not known")
        }
        try BenchConfiguration(target: target, durationSeconds: 30, faults: rolling.resolvingRolling(nodes: ["a", "b", "c"]))
            .validate()
        #expect(throws: BenchConfigurationError.self) {
            try BenchConfiguration(target: target, durationSeconds: 22, faults: rolling.resolvingRolling(nodes: ["a", "b", "c"]))
                .validate()
        }
    }
}

struct SessionCheckerTests {
    /// Feeds writes (`w5`: a write answered 5; `w?`: a write without a count; `wx`: a write that failed),
    /// and reads (`r5`, `r?`) and returns the kinds.
    private func check(_ script: String) -> [AnswerKind?] {
        var checker = SessionChecker()
        return script.split(separator: " ").map { step -> AnswerKind? in
            let value = Int(step.dropFirst())
            switch step.first {
            case "w" where step == "wx":
                checker.writeFailed()
                return nil
            case "w": return checker.checkWrite(count: value)
            default: return checker.checkRead(count: value)
            }
        }
    }

    @Test func consistentAnswersAreSuccesses() {
        #expect(check("r0 w1 w2 w3 r3 w4 r4 r4") == Array(repeating: .success, count: 8))
    }

    @Test func aCounterBackAtOneIsALostSessionAndTheExpectationFollowsTheServer() {
        #expect(check("w1 w2 w3 w1 w2 r2") == [.success, .success, .success, .lostSession, .success, .success])
        // Even after one confirmed increment.
        #expect(check("w1 w1") == [.success, .lostSession])
    }

    @Test func aReadWithoutSessionIsOneLostSessionNotCountedAgainByTheNextWrite() {
        #expect(check("w1 w2 r0 r? w1 w2") == [.success, .success, .lostSession, .success, .success, .success])
        // The session came back: the next write is judged against the old expectation.
        #expect(check("w1 w2 r0 w3") == [.success, .success, .lostSession, .success])
        // A fresh session that answers 2 at once is a duplicate.
        #expect(check("w1 w2 r0 w2") == [.success, .success, .lostSession, .duplicate])
    }

    @Test func confirmedAndUnknownIncrementsCountSinceTheSessionBegan() {
        var checker = SessionChecker()
        for count in [1, 2, 3] { _ = checker.checkWrite(count: count) }
        checker.writeFailed()
        _ = checker.checkWrite(count: nil)  // a 2xx without a count: outcome unknown too
        _ = checker.checkRead(count: 3)
        #expect(checker.confirmedIncrements == 3 && checker.unknownIncrements == 2)
        _ = checker.checkWrite(count: 5)  // one of the unknown ones showed up
        #expect(checker.confirmedIncrements == 4 && checker.unknownIncrements == 2)
        // A lost session starts over: the new one holds only the write that created it.
        #expect(checker.checkWrite(count: 1) == .lostSession)
        #expect(checker.confirmedIncrements == 1 && checker.unknownIncrements == 0)
        // So does a fresh session after a read found none.
        var reread = SessionChecker()
        _ = reread.checkWrite(count: 1)
        _ = reread.checkWrite(count: 2)
        #expect(reread.checkRead(count: 0) == .lostSession)
        #expect(reread.checkWrite(count: 1) == .success)
        #expect(reread.confirmedIncrements == 1)
    }

    @Test func aMissingIncrementIsALostUpdate() {
        #expect(check("w1 w2 w3 w4 w5 w5 w6") == [.success, .success, .success, .success, .success, .lostUpdate, .success])
        #expect(check("w1 w2 w3 w4 w5 w3 w4") == [.success, .success, .success, .success, .success, .lostUpdate, .success])
    }

    @Test func anIncrementAppliedTwiceIsADuplicate() {
        #expect(check("w2") == [.duplicate])
        #expect(check("w1 w2 w4 w5") == [.success, .success, .duplicate, .success])
    }

    @Test func failedWritesMayOrMayNotHaveBeenApplied() {
        // Applied: the next write answers one more than expected.
        #expect(check("w1 wx w3") == [.success, nil, .success])
        // Not applied.
        #expect(check("w1 wx w2") == [.success, nil, .success])
        // Two failed writes allow two more, not three.
        #expect(check("w1 wx wx w4 w5") == [.success, nil, nil, .success, .success])
        #expect(check("w1 wx wx w5") == [.success, nil, nil, .duplicate])
        // A read that shows a failed write confirms it.
        #expect(check("w1 wx r2 w3") == [.success, nil, .success, .success])
    }

    /// A write whose outcome is unknown (sent without a key and failed) may be applied later than
    /// the next write's answer: it allows one extra increment, once, whenever it shows.
    @Test func anUnknownWriteAllowsOneExtraIncrementWheneverItShows() {
        // Applied late: after w2 (which did not include it), w4 includes it.
        #expect(check("w1 wx w2 w4") == [.success, nil, .success, .success])
        #expect(check("w1 wx w2 w3 r3 w5 w6") == [.success, nil, .success, .success, .success, .success, .success])
        // ...but only once: a second extra increment is a real duplicate.
        #expect(check("w1 wx w2 w4 w6") == [.success, nil, .success, .success, .duplicate])
        #expect(check("w1 wx w3 w5") == [.success, nil, .success, .duplicate])
        // A read that shows it accounts for it.
        #expect(check("w1 wx r2 w4") == [.success, nil, .success, .duplicate])
        #expect(check("w1 wx w2 r3 w4 w6") == [.success, nil, .success, .success, .success, .duplicate])
        // Two unknown writes, one shown by each later write.
        #expect(check("w1 wx wx w3 w5 w7") == [.success, nil, nil, .success, .success, .duplicate])
        // It never excuses a missing increment, a fresh session, or a stale read.
        #expect(check("w1 w2 wx w2") == [.success, .success, nil, .lostUpdate])
        #expect(check("w1 w2 w3 wx w3 w5") == [.success, .success, .success, nil, .lostUpdate, .success])
        #expect(check("w1 w2 wx w1") == [.success, .success, nil, .lostSession])
        #expect(check("w1 w2 w3 wx r2") == [.success, .success, .success, nil, .staleRead])
        // A duplicate takes every unknown write as applied: nothing is left to excuse the next one.
        #expect(check("w1 wx w4 w6") == [.success, nil, .duplicate, .duplicate])
    }

    @Test func aReadBelowTheLastWriteIsStaleAndChangesNothing() {
        #expect(check("w1 w2 w3 r2 w4 r1 r4") == [.success, .success, .success, .staleRead, .success, .staleRead, .success])
        // A stale read that was real data loss shows as a lost update on the next write.
        #expect(check("w1 w2 w3 r2 w3") == [.success, .success, .success, .staleRead, .lostUpdate])
    }

    @Test func answersWithoutAUsableCountAreErrors() {
        #expect(check("w1 w? w3 r-1") == [.success, .error, .success, .error])
        #expect(check("w0") == [.error])
    }
}

struct CookieJarTests {
    @Test func storesReplacesAndSendsCookies() {
        var jar = CookieJar()
        #expect(jar.cookieHeader() == nil)
        jar.store(setCookie: "sid=abc; Path=/; HttpOnly; SameSite=Lax")
        jar.store(setCookie: "theme=\"dark\"")
        #expect(jar.cookieHeader() == "sid=abc; theme=dark")
        jar.store(setCookie: "sid=def; Path=/")
        #expect(jar.cookieHeader() == "theme=dark; sid=def")
        #expect(jar.value(of: "sid") == "def")
        jar.store(setCookie: "no equals sign")
        jar.store(setCookie: "=nameless")
        #expect(jar.cookieHeader() == "theme=dark; sid=def")
    }

    @Test func maxAgeZeroAndPastExpiresDelete() {
        var jar = CookieJar()
        jar.store(setCookie: "a=1")
        jar.store(setCookie: "b=2")
        jar.store(setCookie: "c=3")
        jar.store(setCookie: "a=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        jar.store(setCookie: "b=x; expires=Sunday, 06-Nov-94 08:49:37 GMT")
        #expect(jar.cookieHeader() == "c=3")
        // Max-Age wins over Expires.
        jar.store(setCookie: "d=4; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(jar.value(of: "d") == "4")
    }

    @Test func cookiesExpireWithTime() {
        var jar = CookieJar()
        jar.store(setCookie: "a=1; Max-Age=10", now: 1_000)
        jar.store(setCookie: "b=2; Expires=Thu, 01 Jan 1970 00:20:00 GMT", now: 1_000)
        #expect(jar.cookieHeader(now: 1_005) == "a=1; b=2")
        #expect(jar.cookieHeader(now: 1_010) == "b=2")
        #expect(jar.cookieHeader(now: 1_200) == nil)
    }
}

struct BenchTargetTests {
    @Test func loopbackURLsWithOptionalPrefix() throws {
        let t = try BenchTarget(baseURL: "http://127.0.0.1:8080")
        #expect(t.port == 8080 && t.basePath == "" && t.baseURL == "http://127.0.0.1:8080")
        #expect(t.write == BenchTarget.Endpoint(method: "POST", path: "/api/counter"))
        #expect(t.read == BenchTarget.Endpoint(method: "GET", path: "/api/session"))
        let tomcat = try BenchTarget(
            baseURL: "http://localhost:9000/cluster-app/", write: try .init("post /counter"), read: try .init("GET /session"),
            countField: "session.count")
        #expect(tomcat.baseURL == "http://127.0.0.1:9000/cluster-app")
        #expect(tomcat.write.description == "POST /counter")
    }

    @Test(arguments: [
        "https://127.0.0.1:8080", "http://10.0.0.1:8080", "http://example.com:80", "http://127.0.0.1", "http://127.0.0.1:0",
        "http://127.0.0.1:70000", "127.0.0.1:8080", "http://127.0.0.1:8080/a?b",
    ])
    func otherURLsAreRejected(url: String) {
        #expect(throws: BenchTargetError.self) { try BenchTarget(baseURL: url) }
    }

    @Test func badEndpointsAndFieldsAreRejected() {
        #expect(throws: BenchTargetError.self) { try BenchTarget.Endpoint("/api/counter") }
        #expect(throws: BenchTargetError.self) { try BenchTarget.Endpoint("POST api/counter") }
        #expect(throws: BenchTargetError.self) { try BenchTarget(baseURL: "http://127.0.0.1:1", countField: "a..b") }
        #expect(throws: BenchTargetError.self) { try BenchTarget(baseURL: "http://127.0.0.1:1", nodeField: "") }
    }
}
