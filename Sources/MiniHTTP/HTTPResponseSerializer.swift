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
            if asciiCaseInsensitiveEquals(field.name, "content-length")
                || asciiCaseInsensitiveEquals(field.name, "connection")
                || asciiCaseInsensitiveEquals(field.name, "transfer-encoding")
            {
                continue
            }
            appendField(&out, field.name, field.value)
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
        // A name can only hold token characters; anything else is dropped so it cannot split the head.
        if name.utf8.allSatisfy(isTokenByte) {
            out.append(contentsOf: name.utf8)
        } else {
            for b in name.utf8 where isTokenByte(b) { out.append(b) }
        }
        out.append(58)
        out.append(32)
        // Never let a value split the header: CR, LF and NUL become spaces.
        if value.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) {
            for b in value.utf8 { out.append(b == 13 || b == 10 || b == 0 ? 32 : b) }
        } else {
            out.append(contentsOf: value.utf8)
        }
        out.append(13)
        out.append(10)
    }
}
