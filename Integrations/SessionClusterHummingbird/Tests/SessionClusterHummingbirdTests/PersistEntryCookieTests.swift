import Foundation
import Hummingbird
import HummingbirdTesting
import SessionClusterAsync
import SessionClusterHummingbird
import SessionClusterTestKit
import SessionCore
import TestSupport
import Testing

/// Issue 14, finding 10b: an entry of the persist driver has an ID anyone
/// who knows its key can compute (`b64(SHA256("persist:" + key))`). With one
/// store behind both the persist driver and the native middleware (unsigned
/// cookies), that ID sent as the session cookie must get a new, empty
/// session, and leave the entry as it was.
@Suite struct PersistEntriesAreNoSessionsTests {
    struct Secret: Codable, Sendable, Equatable {
        var user: String
        var role: String
    }

    @Test(arguments: StoreKind.allCases)
    func aPersistEntryIDIsNoSessionCookie(_ kind: StoreKind) async throws {
        try await withExecutor { executor in
            try await withStores(kind) { stores in
                let store = stores.nodes[0]
                let persist = SessionStorePersistDriver(store: store, executor: executor)  // namespace "persist:"
                try await persist.set(key: "hbs.victim", value: Secret(user: "admin", role: "root"))
                let entryID = SessionKeyValueStore(store: store, executor: executor, namespace: "persist:")
                    .id(for: "hbs.victim")
                let before = try #require(try await executor.run { try store.load(entryID) })

                let router = Router(context: BasicClusterSessionRequestContext.self)
                router.add(
                    middleware: ClusterSessionMiddleware(
                        store: store, configuration: SessionConfiguration(), executor: executor,
                        logger: quietLogger()))
                router.post("/visit") { _, context -> String in
                    let session = try await context.session()
                    let seen = session.attributeNames.joined(separator: ",")
                    try session.set("visited", true)
                    return "[\(seen)]"
                }
                try await Application(router: router).test(.router) { client in
                    let jar = CookieJar(["sid": entryID.rawValue])
                    let response = try await client.call(.post, "/visit", jar: jar)
                    #expect(response.status == .ok)
                    #expect(String(buffer: response.body) == "[]", "a new, empty session")
                    let cookie = try #require(jar["sid"])
                    #expect(cookie != entryID.rawValue, "a new session ID")
                    #expect(String(buffer: try await client.call(.post, "/visit", jar: jar).body) == "[visited]")
                }
                let kept = try await persist.get(key: "hbs.victim", as: Secret.self)
                #expect(kept == Secret(user: "admin", role: "root"))
                let after = try #require(try await executor.run { try store.load(entryID) })
                #expect(after.attributes == before.attributes, "the entry is unchanged")
            }
        }
    }
}
