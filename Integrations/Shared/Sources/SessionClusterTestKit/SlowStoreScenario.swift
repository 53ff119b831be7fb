import SessionCore
import TestSupport
import Testing

/// The slow-store scenario on a live server at `port`, whatever the framework: two
/// sessions are created, then their store calls block (`store.makeSlow`) while
/// twenty requests of other sessions must complete; only then is the store
/// released. Were store calls run on an event loop or the cooperative pool, the
/// two stuck calls would hold those threads and the others would wait.
public func exerciseSlowStore(_ store: SlowSessionStore, port: Int) async throws {
    var slowCookies: [String] = []
    for _ in 0..<2 {
        let created = try await onThread { try rawHTTP(port: port, "POST", "/api/counter") }
        let cookie = try #require(created.setCookies.first?.split(separator: ";").first.map(String.init))
        store.makeSlow(try #require(SessionID(rawValue: String(cookie.dropFirst("sid=".count)))))
        slowCookies.append(cookie)
    }
    let finished = CompletionLog()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (i, cookie) in slowCookies.enumerated() {
            group.addTask {
                let response = try await onThread {
                    try rawHTTP(port: port, "GET", "/api/session", headers: ["Cookie": cookie])
                }
                #expect(response.status == 200)
                #expect(response.bodyText.contains(#""count":1"#))
                finished.append("slow-\(i)")
            }
        }
        let stuck = await eventually { store.blockedCalls == 2 }
        #expect(stuck, "the slow requests reached the store")
        try await withThrowingTaskGroup(of: Void.self) { fast in
            for i in 0..<20 {
                fast.addTask {
                    let response = try await onThread { try rawHTTP(port: port, "POST", "/api/counter") }
                    #expect(response.status == 200)
                    #expect(response.bodyText.contains(#""count":1"#))
                    finished.append("fast-\(i)")
                }
            }
            try await fast.waitForAll()
        }
        #expect(store.blockedCalls == 2, "the other sessions completed while the store was stuck")
        store.release()
        try await group.waitForAll()
    }
    let order = finished.entries
    #expect(order.count == 22)
    #expect(order.prefix(20).allSatisfy { $0.hasPrefix("fast-") }, "completion order: \(order)")
    #expect(store.delayedCalls == 2)
}
