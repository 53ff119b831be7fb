/// Serializes responses into HTTP/1.1 bytes.
public enum HTTPResponseSerializer {
    /// The bytes of `response`. `Content-Length` is set from the body (except
    /// for 1xx, 204 and 304), `Connection: close` is added when `keepAlive`
    /// is false, and the body is left out when `headOnly` (a HEAD request).
    public static func serialize(
        _ response: HTTPResponse, keepAlive: Bool, headOnly: Bool = false, version: HTTPVersion = .http1_1
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128 + response.body.count + response.headers.count * 32)
        if version == .http1_1, let line = statusLines[response.status] {
            out.append(contentsOf: line)
        } else {
            out.append(contentsOf: "\(version) \(response.status) \(reasonPhrase(response.status))\r\n".utf8)
        }
        let bodyless = response.status < 200 || response.status == 204 || response.status == 304
        for field in response.headers {
            // On the names' and values' bytes in place (withUTF8 copies only a non-native string).
            var name = field.name
            var value = field.value
            name.withUTF8 { name in
                guard !isFramingField(name) else { return }
                value.withUTF8 { appendField(&out, name, $0) }
            }
        }
        if !bodyless {
            appendField(&out, "Content-Length", String(response.body.count))
        }
        if !keepAlive {
            appendField(&out, "Connection", "close")
        } else if version == .http1_0 {
            appendField(&out, "Connection", "keep-alive")
        }
        out.append(13)
        out.append(10)
        if !headOnly && !bodyless {
            out.append(contentsOf: response.body)
        }
        return out
    }

    /// Status lines of HTTP/1.1 responses, built once.
    private static let statusLines: [Int: [UInt8]] = Dictionary(
        uniqueKeysWithValues: [100, 200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422,
                               429, 431, 500, 501, 502, 503, 504, 505].map {
            ($0, Array("HTTP/1.1 \($0) \(reasonPhrase($0))\r\n".utf8))
        })

    private static func appendField(_ out: inout [UInt8], _ name: String, _ value: String) {
        var name = name
        var value = value
        name.withUTF8 { name in value.withUTF8 { appendField(&out, name, $0) } }
    }

    private static func appendField(_ out: inout [UInt8], _ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) {
        // A name can only hold token characters; anything else is dropped so it cannot split the head.
        if name.allSatisfy(isTokenByte) {
            out.append(contentsOf: name)
        } else {
            for b in name where isTokenByte(b) { out.append(b) }
        }
        out.append(58)
        out.append(32)
        // Never let a value split the header: CR, LF and NUL become spaces.
        if value.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) {
            for b in value { out.append(b == 13 || b == 10 || b == 0 ? 32 : b) }
        } else {
            out.append(contentsOf: value)
        }
        out.append(13)
        out.append(10)
    }

    /// Content-Length, Connection and Transfer-Encoding (any case): the serializer sets these itself.
    private static func isFramingField(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
        let candidate: StaticString
        switch name.count {
        case 14: candidate = "content-length"
        case 10: candidate = "connection"
        case 17: candidate = "transfer-encoding"
        default: return false
        }
        let lower = UnsafeBufferPointer(start: candidate.utf8Start, count: candidate.utf8CodeUnitCount)
        for i in 0..<name.count where lowerASCII(name[i]) != lower[i] { return false }
        return true
    }
}
