// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "SessionClusterHummingbird",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SessionClusterHummingbird", targets: ["SessionClusterHummingbird"]),
        .executable(name: "hummingbird-node", targets: ["HummingbirdNode"]),
    ],
    dependencies: [
        .package(name: "SessionCluster", path: "../.."),
        .package(name: "SessionClusterIntegrationSupport", path: "../Shared"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "SessionClusterHummingbird",
            dependencies: [
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterAsync", package: "SessionClusterIntegrationSupport"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]),
        .executableTarget(
            name: "HummingbirdNode",
            dependencies: [
                "SessionClusterHummingbird",
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterAsync", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterNodeKit", package: "SessionClusterIntegrationSupport"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ],
            path: "Examples/HummingbirdNode"),
        .testTarget(
            name: "SessionClusterHummingbirdTests",
            dependencies: [
                "SessionClusterHummingbird", "HummingbirdNode",
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterAsync", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterNodeKit", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterTestKit", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterTesting", package: "SessionCluster"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
