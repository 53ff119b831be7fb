#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Secrets from the environment, so they never show in `ps`: `NAME` holds one
/// secret; `NAME_FILE` names a file with one secret per line (the first is the
/// current one; the others are older ones still accepted, for rotation).
public enum SecretFromEnvironment {
    /// The secrets of `name`, or nil when neither `name` nor `name_FILE` is set.
    /// Throws when both are set, the file cannot be read, or it holds no secret.
    public static func secrets(_ name: String) throws(SecretError) -> [[UInt8]]? {
        let direct = getenv(name).map { String(cString: $0) }
        let path = getenv(name + "_FILE").map { String(cString: $0) }
        switch (direct, path) {
        case (nil, nil):
            return nil
        case (let value?, nil):
            return [Array(value.utf8)]
        case (nil, let path?):
            guard let text = readSmallFile(path) else {
                throw SecretError("\(name)_FILE: cannot read \(path): \(String(cString: strerror(errno)))")
            }
            let lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map { Array($0.utf8) }
            guard !lines.isEmpty else { throw SecretError("\(name)_FILE: \(path) holds no secret") }
            return lines
        case (_?, _?):
            throw SecretError("both \(name) and \(name)_FILE are set; set one")
        }
    }

    private static func readSmallFile(_ path: String) -> String? {
        guard let file = fopen(path, "re") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 1 << 20 {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A secret in the environment that cannot be used: both variables set, a file that cannot be read
/// or holds no secret.
public struct SecretError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, naming the variable.
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "secret error: \(message)" }
}
