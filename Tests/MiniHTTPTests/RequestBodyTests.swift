#if canImport(Glibc)
import Glibc
#endif
import Testing

@testable import MiniHTTP
import SystemSupport
import TestSupport

@Suite("HTTPServer: request bodies (deadline, buffer growth)")
struct RequestBodyTests {
    /// One byte every 200 ms never leaves the connection quiet for the 1 s body timeout:
    /// only a deadline on the whole body ends it.
    @Test func slowBodyIsCutAtTheTotalDeadline() throws {
        try withServer(testConfiguration(bodyTimeoutMillis: 1_000), responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let start = monotonicMillis()
            client.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            let trickle = TrickleSender(client.fd, Array(repeating: UInt8(ascii: "x"), count: 100), intervalMillis: 200)
            defer { trickle.stop() }
            // Waits 10x the deadline: a loaded machine only delays the 408; the trickle would
            // take 20 s, so the 408 comes from the deadline and not from the end of the body.
            let response = try #require(client.readResponse(timeoutMillis: 10_000), "no answer within 10 s; the deadline is 1 s")
            let elapsed = monotonicMillis() - start
            #expect(response.status == 408)
            #expect(response.header("Connection") == "close")
            #expect(elapsed >= 1_000, "408 after \(elapsed) ms, before the 1 s deadline")
            #expect(client.waitForClose())
            #expect(trickle.sent < 100)
            #expect(server.statistics.timeouts == 1)
            #expect(server.statistics.requests == 0, "the handler never saw the request")
        }
    }

    /// A head announcing 8 MiB (within the limit) followed by a few bytes sets aside
    /// what arrived, not what was announced; the full body still arrives whole.
    @Test func announcedLengthIsNotReservedUpFront() throws {
        let size = 8 << 20
        let configuration = testConfiguration(limits: HTTPParserLimits(maxBodyBytes: 16 << 20), bodyTimeoutMillis: 20_000)
        try withServer(configuration, responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            defer { client.close() }
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            client.send(Array("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: \(size)\r\n\r\n".utf8) + payload[0..<10])
            try #require(poll(timeoutMillis: 3_000) { server.statistics.bodyBufferBytes > 0 }, "the head was never read")
            let reserved = server.statistics.bodyBufferBytes
            #expect(reserved < 1 << 20, "\(reserved) bytes set aside for 10 bytes of a body announced as 8 MiB")

            client.send(Array(payload[10...]))
            let response = try #require(client.readResponse(timeoutMillis: 20_000))
            #expect(response.status == 200)
            #expect(response.body == Array("POST /big\n".utf8) + payload)
            #expect(server.statistics.bodyBufferBytes == 0, "the body was handed over")
        }
    }

    @Test func aConnectionClosedMidBodyGivesItsBufferBack() throws {
        try withServer(responder: echoResponder) { server in
            let client = try RawHTTPConnection(port: server.port)
            client.send("POST /gone HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
            try #require(poll(timeoutMillis: 3_000) { server.statistics.bodyBufferBytes > 0 })
            client.close()
            #expect(poll(timeoutMillis: 3_000) { server.statistics.bodyBufferBytes == 0 })
        }
    }

    @Test func bufferStartsAtMost64KiBAndDoublesUpToTheLimit() {
        #expect(RequestBodyBuffer.initialCapacity(announcedLength: 10) == 10)
        #expect(RequestBodyBuffer.initialCapacity(announcedLength: 8 << 20) == 64 * 1024)
        #expect(RequestBodyBuffer.grownCapacity(current: 64 * 1024, needed: 64 * 1024 + 1, limit: 8 << 20) == 128 * 1024)
        #expect(RequestBodyBuffer.grownCapacity(current: 64 * 1024, needed: 300 * 1024, limit: 8 << 20) == 300 * 1024)
        #expect(RequestBodyBuffer.grownCapacity(current: 6 << 20, needed: (6 << 20) + 1, limit: 8 << 20) == 8 << 20)
        #expect(RequestBodyBuffer.grownCapacity(current: 0, needed: 5, limit: 1 << 20) == 5)

        // Growing 64 KiB at a time to 8 MiB takes a few doublings, never past the limit.
        var capacity = RequestBodyBuffer.initialCapacity(announcedLength: 8 << 20)
        var size = 0
        var growths = 0
        while size < 8 << 20 {
            size += 64 * 1024
            if size > capacity {
                capacity = RequestBodyBuffer.grownCapacity(current: capacity, needed: size, limit: 8 << 20)
                growths += 1
            }
            #expect(capacity <= 8 << 20)
        }
        #expect(capacity == 8 << 20)
        #expect(growths == 7)
    }

    @Test func chunkedBodyBufferGrowsWithTheBytesAndKeepsThem() {
        var buffer = RequestBodyBuffer()
        buffer.start(announcedLength: nil, limit: 1 << 20)
        #expect(buffer.capacity == 0, "nothing is set aside before a chunk arrives")
        var expected: [UInt8] = []
        for i in 0..<90 {
            let chunk = [UInt8](repeating: UInt8(i), count: 10_000)
            buffer.append(chunk)
            expected += chunk
        }
        #expect(buffer.capacity < (1 << 20) + 4096, "900 KB of a body limited to 1 MiB")
        #expect(buffer.take() == expected)
        #expect(buffer.capacity == 0)
    }
}
