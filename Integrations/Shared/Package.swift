// swift-tools-version:6.0
import PackageDescription

// Framework-neutral pieces the Hummingbird and Vapor adapters share: the
// async session machinery over the core's blocking stores, the example
// nodes' options and API, and test helpers (over the core's test support,
// SessionClusterTesting). No web framework here.
let package = Package(
    name: "SessionClusterIntegrationSupport",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SessionClusterAsync", targets: ["SessionClusterAsync"]),
        .library(name: "SessionClusterNodeKit", targets: ["SessionClusterNodeKit"]),
        .library(name: "SessionClusterTestKit", targets: ["SessionClusterTestKit"]),
    ],
    dependencies: [
        .package(name: "SessionCluster", path: "../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "SessionClusterAsync",
            dependencies: [
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SystemSupport", package: "SessionCluster"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "SessionClusterNodeKit",
            dependencies: [
                "SessionClusterAsync",
                .product(name: "SystemSupport", package: "SessionCluster"),
                .product(name: "SessionReplication", package: "SessionCluster"),
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionRedis", package: "SessionCluster"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .target(
            name: "SessionClusterTestKit",
            dependencies: [
                "SessionClusterAsync",
                .product(name: "SystemSupport", package: "SessionCluster"),
                .product(name: "SessionReplication", package: "SessionCluster"),
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionRedis", package: "SessionCluster"),
                .product(name: "SessionClusterTesting", package: "SessionCluster"),
            ]),
        .testTarget(
            name: "SessionClusterAsyncTests",
            dependencies: [
                "SessionClusterAsync", "SessionClusterNodeKit", "SessionClusterTestKit",
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterTesting", package: "SessionCluster"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
