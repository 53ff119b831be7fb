import Testing

extension Tag {
    /// A suite that needs a service or program besides the test process: Redis (a
    /// redis-server, a Redis Cluster, Sentinel), the `session-cluster` binary or an
    /// example node, curl, Chromium or Python. Every other suite is a unit suite (it
    /// may use loopback sockets and threads of its own). Tag whole suites with it:
    /// `scripts/test.sh --unit` skips them, `--integration` runs only them
    /// (scripts/test-selection.sh reads the tag from the sources).
    @Tag public static var integration: Self
}
