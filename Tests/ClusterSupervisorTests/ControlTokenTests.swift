@testable import ClusterSupervisor
import MiniHTTP
import Testing

/// Attack: the demo listens on a network address, and anyone there kills its nodes through the
/// control API. Beyond loopback the control API needs the token the demo made at start.
@Suite("Control API: a token beyond loopback")
struct ControlTokenTests {
    let token = "0123456789abcdef0123456789abcdef"

    func status(_ headers: HTTPHeaders, method: String = "POST", token: String?) -> Int? {
        let hosts = ControlAPI.allowedHosts(listenHost: "192.168.1.20", port: 8080)
        let head = HTTPRequestHead(method: method, target: "/_cluster/nodes/node-1/kill", headers: headers)
        return ControlAPI.refusal(head, allowedHosts: hosts, token: token)?.status
    }

    @Test func withATokenOnlyItsBearerPasses() {
        let base: HTTPHeaders = ["Host": "192.168.1.20:8080", ControlAPI.controlHeader.name: "1"]
        #expect(status(base, token: token) == 401, "the control header alone is not enough")
        #expect(status(base, method: "GET", token: token) == 401, "nor for a GET")
        var wrong = base
        wrong.add(name: "Authorization", value: "Bearer 0123456789abcdef0123456789abcdee")
        #expect(status(wrong, token: token) == 401)
        var right = base
        right.add(name: "Authorization", value: "Bearer \(token)")
        #expect(status(right, token: token) == nil)
        var foreign = right
        foreign.add(name: "Origin", value: "http://evil.example")
        #expect(status(foreign, token: token) == 403, "the token does not lift the origin check")
        #expect(status(base, token: nil) == nil, "without a token (loopback) the header rules alone apply")
    }

    @Test func aDemoBeyondLoopbackCannotStartWithoutOne() {
        var configuration = ClusterConfiguration(host: "0.0.0.0", executable: "/bin/sh")
        let missing = #expect(throws: SupervisorError.self) { try ClusterSupervisor(configuration: configuration, logger: .init(label: "t")) }
        #expect(missing?.message.contains("needs a token") == true, "\(String(describing: missing))")
        configuration.controlToken = "short"
        let short = #expect(throws: SupervisorError.self) { try ClusterSupervisor(configuration: configuration, logger: .init(label: "t")) }
        #expect(short?.message.contains("at least 16") == true)
        #expect(ClusterConfiguration.isLoopback("127.0.0.1") && ClusterConfiguration.isLoopback("::1"))
        #expect(!ClusterConfiguration.isLoopback("0.0.0.0") && !ClusterConfiguration.isLoopback("192.168.1.20"))
    }
}
