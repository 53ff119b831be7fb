import SessionReplication
import Testing

@Suite struct WireTests {
    @Test func roundTripsEveryType() throws {
        var w = WireWriter()
        w.u8(7)
        w.u32(0xDEAD_BEEF)
        w.u64(.max)
        w.i64(-42)
        w.data([0, 1, 255])
        w.string("zoë")
        w.bool(true)
        var r = WireReader(w.bytes)
        #expect(try r.u8() == 7)
        #expect(try r.u32() == 0xDEAD_BEEF)
        #expect(try r.u64() == .max)
        #expect(try r.i64() == -42)
        #expect(try r.data() == [0, 1, 255])
        #expect(try r.string() == "zoë")
        #expect(try r.bool())
        try r.expectEnd()
    }

    @Test func truncatedOversizedAndInvalidInputThrows() {
        var short = WireReader([0, 0, 0])
        #expect(throws: WireError.self) { try short.u32() }
        var w = WireWriter()
        w.data([UInt8](repeating: 1, count: 100))
        var limited = WireReader(w.bytes)
        #expect(throws: WireError.self) { try limited.data(limit: 10) }
        var lying = WireReader([0, 0, 0, 9, 1, 2])  // says 9 bytes, has 2
        #expect(throws: WireError.self) { try lying.data() }
        var badUTF8 = WireReader([0, 0, 0, 1, 0xFF])
        #expect(throws: WireError.self) { try badUTF8.string() }
        var badBool = WireReader([2])
        #expect(throws: WireError.self) { try badBool.bool() }
        #expect(throws: WireError.self) { try WireReader([1]).expectEnd() }
    }
}
