import Foundation

/// A real HTTP client for tests: curl, with its own cookie jar.
public final class CurlClient: @unchecked Sendable {  // used by one test at a time
    public let jar: URL

    public init() {
        jar = FileManager.default.temporaryDirectory.appendingPathComponent("jar-\(UUID().uuidString)")
    }

    deinit { try? FileManager.default.removeItem(at: jar) }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String]
        public var body: String

        /// Values of every header named `name`.
        public func header(_ name: String) -> [String] {
            headers.filter { $0.lowercased().hasPrefix(name.lowercased() + ":") }
                .map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
        }
    }

    /// Sends one request; `useJar` sends and stores cookies.
    public func request(
        _ method: String, _ url: String, headers: [String] = [], body: String? = nil, useJar: Bool = true
    ) throws -> Response {
        var args = ["-s", "-i", "--max-time", "5", "-X", method]
        if useJar { args += ["-b", jar.path, "-c", jar.path] }
        for h in headers { args += ["-H", h] }
        if let body { args += ["--data-binary", body] }
        args.append(url)
        // A ChildProcess (not Foundation's Process): it dies with the test runner. `-s` keeps stderr
        // empty, so the log holds the response alone; `--max-time 5` ends it, the 30 s wait is a backstop.
        let process = try ChildProcess(URL(fileURLWithPath: "/usr/bin/curl"), args)
        guard process.waitForExit(timeout: 30) != nil else {
            process.kill()
            throw TestError("curl \(method) \(url) did not end within 30 s (--max-time 5)")
        }
        let text = process.output
        var parts = text.components(separatedBy: "\r\n\r\n")
        // Skip interim 100 Continue heads.
        while parts.count > 1, parts[0].hasPrefix("HTTP/1.1 100") { parts.removeFirst() }
        let headLines = parts[0].components(separatedBy: "\r\n")
        let fields = headLines[0].split(separator: " ")
        let status = fields.count > 1 ? Int(fields[1]) ?? 0 : 0
        return Response(
            status: status, headers: Array(headLines.dropFirst()),
            body: parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// The value of the cookie `name` in the jar.
    public func cookie(_ name: String) -> String? {
        guard let text = try? String(contentsOf: jar, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where !line.hasPrefix("# ") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            if fields.count >= 7, fields[5] == name { return String(fields[6]) }
        }
        return nil
    }
}
