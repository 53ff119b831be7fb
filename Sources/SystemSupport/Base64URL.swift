private let base64URLAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

/// Base64url without padding (RFC 4648 §5).
public func base64URLEncode(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count * 4 + 2) / 3)
    var i = 0
    while i + 2 < bytes.count {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        out.append(base64URLAlphabet[Int(n >> 18 & 63)])
        out.append(base64URLAlphabet[Int(n >> 12 & 63)])
        out.append(base64URLAlphabet[Int(n >> 6 & 63)])
        out.append(base64URLAlphabet[Int(n & 63)])
        i += 3
    }
    let rest = bytes.count - i
    if rest == 1 {
        let n = UInt32(bytes[i]) << 16
        out.append(base64URLAlphabet[Int(n >> 18 & 63)])
        out.append(base64URLAlphabet[Int(n >> 12 & 63)])
    } else if rest == 2 {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
        out.append(base64URLAlphabet[Int(n >> 18 & 63)])
        out.append(base64URLAlphabet[Int(n >> 12 & 63)])
        out.append(base64URLAlphabet[Int(n >> 6 & 63)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// Decodes base64url without padding; nil on any invalid character or length.
public func base64URLDecode(_ text: String) -> [UInt8]? {
    var values: [UInt32] = []
    values.reserveCapacity(text.utf8.count)
    for b in text.utf8 {
        switch b {
        case 65...90: values.append(UInt32(b - 65))
        case 97...122: values.append(UInt32(b - 71))
        case 48...57: values.append(UInt32(b + 4))
        case 45: values.append(62)
        case 95: values.append(63)
        default: return nil
        }
    }
    if values.count % 4 == 1 { return nil }
    var out: [UInt8] = []
    var i = 0
    while i + 3 < values.count {
        let n = values[i] << 18 | values[i + 1] << 12 | values[i + 2] << 6 | values[i + 3]
        out.append(UInt8(n >> 16 & 255))
        out.append(UInt8(n >> 8 & 255))
        out.append(UInt8(n & 255))
        i += 4
    }
    let rest = values.count - i
    if rest == 2 {
        let n = values[i] << 18 | values[i + 1] << 12
        out.append(UInt8(n >> 16 & 255))
    } else if rest == 3 {
        let n = values[i] << 18 | values[i + 1] << 12 | values[i + 2] << 6
        out.append(UInt8(n >> 16 & 255))
        out.append(UInt8(n >> 8 & 255))
    }
    return out
}
