@testable import SessionCore
import SystemSupport
import Testing

@Suite struct SessionIDTests {
    @Test func generatedIDsAre43Base64URLCharactersAndDistinct() {
        var seen = Set<String>()
        for _ in 0..<10_000 {
            let id = SessionID.generate()
            #expect(id.rawValue.utf8.count == 43)
            #expect(SessionID(rawValue: id.rawValue) == id)
            seen.insert(id.rawValue)
        }
        #expect(seen.count == 10_000)
    }

    @Test func generatedIDsDecodeTo32Bytes() throws {
        let bytes = try #require(base64URLDecode(SessionID.generate().rawValue))
        #expect(bytes.count == 32)
    }

    @Test(arguments: ["", "short", String(repeating: "a", count: 42), String(repeating: "a", count: 44),
                      String(repeating: "a", count: 42) + "=", String(repeating: "a", count: 42) + "+",
                      String(repeating: "a", count: 42) + "/", String(repeating: "é", count: 21) + "a"])
    func malformedIDsAreRejected(_ text: String) {
        #expect(SessionID(rawValue: text) == nil)
    }

    @Test func descriptionHidesTheID() {
        let id = SessionID.generate()
        #expect(!"\(id)".contains(id.rawValue))
    }

    @Test func base64URLRoundTripsAllLengths() throws {
        var rng = SystemRandomNumberGenerator()
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let text = base64URLEncode(bytes)
            #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
            #expect(base64URLDecode(text) == bytes)
        }
        #expect(base64URLEncode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(base64URLEncode([0xFB, 0xFF]) == "-_8")
        #expect(base64URLDecode("a") == nil)
        #expect(base64URLDecode("ab$d") == nil)
    }

    @Test func aTaggedIDKeepsItsTagAndIsOtherwiseFresh() throws {
        let old = SessionID.generate()
        let new = SessionID.generate(slotTag: old.slotTag)
        #expect(new.slotTag == old.slotTag)
        #expect(new.rawValue.count == 43)
        #expect(SessionID(rawValue: new.rawValue) == new, "the cookie shape is unchanged")
        #expect(new.rawValue.dropFirst(3) != old.rawValue.dropFirst(3))
        // 240 fresh bits: a thousand IDs with one tag are all different.
        #expect(Set((0..<1000).map { _ in SessionID.generate(slotTag: "abc").rawValue }).count == 1000)
        // A tag of another shape is ignored: a random one instead.
        for bad in ["", "ab", "abcd", "a+c", "é_"] {
            #expect(SessionID.generate(slotTag: bad).rawValue.count == 43)
            #expect(!SessionID.isSlotTag(bad))
        }
    }

    @Test func storageKeysCarryTheSlotTagOfTheirSession() throws {
        let id = SessionID.generate()
        let session = try IdempotentRequest(key: "k", method: "POST", target: "/", body: [], scope: .session(id))
        #expect(session.slotTag == id.slotTag)
        let anonymous = try IdempotentRequest(key: "k", method: "POST", target: "/", body: [], scope: .anonymous)
        let tag = try #require(anonymous.slotTag)
        #expect(SessionID.isSlotTag(tag))
        // Tags of anonymous records are spread: 200 keys give many tags.
        let tags = try Set((0..<200).map {
            try IdempotentRequest(key: "k\($0)", method: "POST", target: "/", body: [], scope: .anonymous).slotTag ?? ""
        })
        #expect(tags.count > 190)
        #expect(IdempotencyScope.slotTag(ofStorageKey: "k-foreign") == nil)
        #expect(IdempotencyScope.slotTag(ofStorageKey: "s:") == nil)
        #expect(IdempotencyScope.slotTag(ofStorageKey: "a:a+c") == nil)
    }
}
