@testable import SessionCore
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
}
