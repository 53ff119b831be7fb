import CHiredis
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Proves hiredis is installed, its header is found and the library links.
@Suite struct CHiredisSmokeTests {
    @Test func connectingToAClosedPortReportsAnError() throws {
        // Port 1 on loopback is never a Redis server.
        let context = try #require(redisConnect("127.0.0.1", 1))
        defer { redisFree(context) }
        #expect(context.pointee.err != 0)
        let message = withUnsafeBytes(of: context.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        #expect(!message.isEmpty)
    }
}

/// The test Redis's URL, `$REDIS_URL` (scripts/test.sh sets it).
private let redisURL = getenv("REDIS_URL").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }

/// Proves hiredis talks to a real Redis: the one of `$REDIS_URL`.
@Suite(.tags(.integration)) struct CHiredisRedisTests {
    @Test(.enabled(if: redisURL != nil, "needs REDIS_URL (scripts/test.sh starts a redis-server)"))
    func pingsTheTestRedis() throws {
        let url = try #require(redisURL)
        // redis://host:port/db
        let rest = url.dropFirst("redis://".count)
        let hostPort = rest.split(separator: "/").first.map(String.init) ?? ""
        let parts = hostPort.split(separator: ":")
        let host = String(parts.first ?? "127.0.0.1")
        let port = Int32(parts.count > 1 ? String(parts[1]) : "6379") ?? 6379
        let context = try #require(redisConnect(host, port))
        defer { redisFree(context) }
        #expect(context.pointee.err == 0)
        let raw = try #require(withVaList([]) { redisvCommand(context, "PING", $0) })
        let reply = raw.assumingMemoryBound(to: redisReply.self)
        defer { freeReplyObject(raw) }
        #expect(reply.pointee.type == REDIS_REPLY_STATUS)
        #expect(String(cString: reply.pointee.str) == "PONG")
    }
}
