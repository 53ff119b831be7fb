import Balancer
import Testing

@Suite("Balancer: configuration")
struct BalancerConfigurationTests {
    @Test func backendSpecsParse() throws {
        #expect(try BackendConfiguration(parsing: "n1=127.0.0.1:9001")
            == BackendConfiguration(name: "n1", host: "127.0.0.1", port: 9001, weight: 1))
        #expect(try BackendConfiguration(parsing: "node-2=[::1]:9002,weight=3")
            == BackendConfiguration(name: "node-2", host: "::1", port: 9002, weight: 3))
        #expect(try BackendConfiguration(parsing: "n=localhost:80").host == "127.0.0.1")
        for bad in ["127.0.0.1:9001", "=127.0.0.1:1", "n=127.0.0.1", "n=example.com:80", "n=127.0.0.1:70000",
                    "n=127.0.0.1:1,weight=0", "n=127.0.0.1:1,weight=x", "n=127.0.0.1:1,color=red", "n/1=127.0.0.1:1"] {
            #expect(throws: BalancerConfigurationError.self, "\(bad)") { try BackendConfiguration(parsing: bad) }
        }
    }

    @Test func invalidConfigurationsAreRefused() {
        let one = BackendConfiguration(name: "a", host: "127.0.0.1", port: 1)
        #expect(throws: BalancerConfigurationError.self) { try BalancerConfiguration(backends: []).validate() }
        #expect(throws: BalancerConfigurationError.self) { try BalancerConfiguration(backends: [one, one]).validate() }
        #expect(throws: BalancerConfigurationError.self) {
            try BalancerConfiguration(backends: [one], eventLoops: 0).validate()
        }
        #expect(throws: BalancerConfigurationError.self) {
            try BalancerConfiguration(backends: [one], clientIdleTimeoutMillis: 0).validate()
        }
        #expect(throws: Never.self) { try BalancerConfiguration(backends: [one]).validate() }
    }

    @Test func listenAddressParses() throws {
        #expect(try parseHostPort("0.0.0.0:8080", what: "x") == ("0.0.0.0", 8080))
        #expect(try parseHostPort("[::]:80", what: "x") == ("::", 80))
        #expect(throws: BalancerConfigurationError.self) { try parseHostPort("8080", what: "x") }
    }
}
