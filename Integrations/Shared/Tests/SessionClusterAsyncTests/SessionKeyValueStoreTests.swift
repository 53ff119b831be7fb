import Foundation
import SessionClusterAsync
import SessionClusterTestKit
import SessionCore
import Testing

/// The key/value view of a store (what the Hummingbird `PersistDriver`
/// stands on): removal and re-creation on every store, the replicated one
/// included (it keeps invalidated IDs as tombstones forever, so entries are
/// never invalidated).
@Suite struct SessionKeyValueStoreTests {
    @Test(arguments: StoreKind.allCases)
    func removedKeysCanBeCreatedAgain(_ kind: StoreKind) async throws {
        try await withExecutor { executor in
            try await withStores(kind) { stores in
                let namespace = "kv-\(UUID().uuidString):"
                let a = SessionKeyValueStore(store: stores.nodes[0], executor: executor, namespace: namespace)
                let b = SessionKeyValueStore(store: stores.nodes[stores.nodes.count - 1], executor: executor, namespace: namespace)
                for round in 1...3 {
                    let value = Array("\"round \(round)\"".utf8)
                    #expect(try await a.create(key: "k", value: value, expiresInMillis: nil), "round \(round)")
                    #expect(try await b.create(key: "k", value: value, expiresInMillis: nil) == false)
                    #expect(try await b.get(key: "k")?.value == value)
                    try await b.remove(key: "k")
                    #expect(try await a.get(key: "k") == nil)
                }
                try await a.set(key: "k", value: Array("1".utf8), expiresInMillis: nil)
                #expect(try await b.get(key: "k")?.value == Array("1".utf8))
                #expect(try await b.get(key: "k")?.hasOwnExpiry == false)
            }
        }
    }

    @Test func keysMapToIssuedIDShapes() {
        let kv = SessionKeyValueStore(store: MemorySessionStore(), namespace: "n:")
        let id = kv.id(for: "hbs.some/key+with=odd chars")
        #expect(id.rawValue.count == 43)
        #expect(kv.id(for: "a") != kv.id(for: "b"))
        #expect(SessionKeyValueStore(store: MemorySessionStore(), namespace: "m:").id(for: "a") != kv.id(for: "a"))
    }
}
