// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "SessionCluster",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SystemSupport", targets: ["SystemSupport"]),
        .library(name: "ClusterLocks", targets: ["ClusterLocks"]),
        .library(name: "SessionCore", targets: ["SessionCore"]),
        .library(name: "MiniHTTP", targets: ["MiniHTTP"]),
        .library(name: "SessionMiddleware", targets: ["SessionMiddleware"]),
        .library(name: "SessionRedis", targets: ["SessionRedis"]),
        .library(name: "PostgresLocks", targets: ["PostgresLocks"]),
        .library(name: "ZooKeeperLocks", targets: ["ZooKeeperLocks"]),
        .library(name: "SessionReplication", targets: ["SessionReplication"]),
        .library(name: "SessionStoreConformance", targets: ["SessionStoreConformance"]),
        .library(name: "LockConformance", targets: ["LockConformance"]),
        .executable(name: "session-cluster", targets: ["session-cluster"]),
        // The test support, for the Integrations packages' tests too (as HummingbirdTesting ships).
        .library(name: "SessionClusterTesting", targets: ["TestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // hiredis, from the system (apt: libhiredis-dev). No pkgConfig: its
        // -D_FILE_OFFSET_BITS=64 makes SwiftPM warn on every build.
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // libsodium, from the system (apt: libsodium-dev): the replication channel's AEAD, one
        // plain C call per frame (swift-crypto's wrappers cost over ten times the cipher's work).
        .systemLibrary(
            name: "CSodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        // libpq, from the system (apt: libpq-dev): PostgreSQL's own client, blocking calls
        // like hiredis's, driven with its asynchronous API and poll for deadlines.
        .systemLibrary(
            name: "CLibPQ",
            providers: [.apt(["libpq-dev"])]
        ),
        // The ZooKeeper C client, multithreaded (apt: libzookeeper-mt-dev).
        .systemLibrary(
            name: "CZooKeeper",
            providers: [.apt(["libzookeeper-mt-dev"])]
        ),
        // epoll, eventfd and accept4, which Glibc does not export.
        .target(name: "CEpoll"),
        // Under every other module: sockets, threads, clocks, locks, a timer, epoll behind Swift
        // types, signals, secure random bytes and base64url. Nothing of sessions or HTTP.
        .target(
            name: "SystemSupport",
            dependencies: [
                "CEpoll", .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // Distributed locks: the LockService protocol every backend implements, DistributedLock
        // (reentrancy, keep-alive, errors) above them, FencedResource. Nothing of sessions.
        .target(
            name: "ClusterLocks",
            dependencies: ["SystemSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "SessionCore",
            dependencies: [
                "ClusterLocks", "SystemSupport", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .target(
            name: "SessionRedis",
            dependencies: [
                "CHiredis", "ClusterLocks", "SessionCore", "SystemSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Locks in PostgreSQL: a lock table (lease on the database's clock) and advisory locks.
        .target(
            name: "PostgresLocks",
            dependencies: ["CLibPQ", "ClusterLocks", "SystemSupport", .product(name: "Logging", package: "swift-log")]
        ),
        // Locks in ZooKeeper: ephemeral sequential nodes, each waiter watching its predecessor.
        .target(
            name: "ZooKeeperLocks",
            dependencies: ["CZooKeeper", "ClusterLocks", "SystemSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "SessionReplication",
            dependencies: [
                "CSodium", "SessionCore", "SystemSupport",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "SessionStoreConformance",
            dependencies: ["SessionCore"]
        ),
        // The behaviour every LockService must have, for each backend's tests.
        .target(
            name: "LockConformance",
            dependencies: ["ClusterLocks", "SystemSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "MiniHTTP",
            dependencies: ["SystemSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "SessionMiddleware",
            dependencies: [
                "SessionCore", "MiniHTTP",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "ClusterDemo",
            dependencies: [
                "ClusterLocks", "PostgresLocks", "SessionCore", "MiniHTTP", "SessionMiddleware", "SessionRedis",
                "SessionReplication", "SystemSupport", "ZooKeeperLocks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "Balancer",
            dependencies: [
                "MiniHTTP", "SystemSupport", .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"), .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "ClusterSupervisor",
            dependencies: ["Balancer", "MiniHTTP", "SystemSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "FailoverBench",
            dependencies: [
                "MiniHTTP", "SystemSupport",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The benchmarks the CLI runs: failover per strategy (clusters it starts), replication, the store.
        .target(
            name: "Benchmarks",
            dependencies: [
                "ClusterDemo", "ClusterLocks", "ClusterSupervisor", "FailoverBench", "MiniHTTP", "PostgresLocks",
                "SessionCore", "SessionRedis", "SessionReplication", "SystemSupport", .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "session-cluster",
            dependencies: [
                "Balancer", "Benchmarks", "ClusterDemo", "ClusterLocks", "ClusterSupervisor", "FailoverBench",
                "PostgresLocks", "SessionRedis", "SystemSupport", "ZooKeeperLocks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "CHiredisTests", dependencies: ["CHiredis", "TestSupport"]),
        .testTarget(
            name: "SessionRedisTests",
            dependencies: [
                "SessionRedis", "SessionCore", "SessionStoreConformance", "TestSupport", "ClusterSupervisor",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .testTarget(
            name: "SessionReplicationTests",
            dependencies: [
                "SessionReplication", "SessionCore", "SessionStoreConformance", "TestSupport",
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .testTarget(name: "SessionCoreTests", dependencies: ["SessionCore", "SessionStoreConformance", "SystemSupport"]),
        .testTarget(
            name: "ClusterLocksTests",
            dependencies: [
                "session-cluster", "Benchmarks", "ClusterDemo", "ClusterLocks", "LockConformance", "SessionCore",
                "SessionRedis", "SystemSupport", "TestSupport",
            ]),
        .testTarget(name: "MiniHTTPTests", dependencies: ["MiniHTTP", "TestSupport"]),
        // Test-only helpers (product SessionClusterTesting): child processes and private
        // redis-servers stopped by PID, a raw HTTP client, curl, Chromium, a quiet logger.
        .target(
            name: "TestSupport", dependencies: ["SystemSupport", .product(name: "Logging", package: "swift-log")],
            path: "Tests/TestSupport"),
        .testTarget(
            name: "SessionMiddlewareTests", dependencies: ["SessionMiddleware", "SessionCore", "MiniHTTP", "SessionRedis", "TestSupport"]),
        .testTarget(
            name: "ClusterDemoTests",
            dependencies: [
                "session-cluster", "ClusterDemo", "MiniHTTP", "SessionCore", "SessionRedis", "SessionReplication", "TestSupport",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .testTarget(
            name: "BalancerTests",
            dependencies: [
                "session-cluster", "Balancer", "MiniHTTP", "TestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .testTarget(
            name: "ClusterSupervisorTests",
            dependencies: ["session-cluster", "ClusterSupervisor", "Balancer", "MiniHTTP", "TestSupport"]),
        .testTarget(
            name: "FailoverBenchTests",
            dependencies: ["FailoverBench", "MiniHTTP", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
