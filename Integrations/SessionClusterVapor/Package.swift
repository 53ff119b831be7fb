// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "SessionClusterVapor",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SessionClusterVapor", targets: ["SessionClusterVapor"]),
        .executable(name: "vapor-node", targets: ["VaporNode"]),
    ],
    dependencies: [
        .package(name: "SessionCluster", path: "../.."),
        .package(name: "SessionClusterIntegrationSupport", path: "../Shared"),
        .package(url: "https://github.com/vapor/vapor.git", from: "4.122.3"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "SessionClusterVapor",
            dependencies: [
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterAsync", package: "SessionClusterIntegrationSupport"),
                .product(name: "Vapor", package: "vapor"),
            ]),
        .executableTarget(
            name: "VaporNode",
            dependencies: [
                "SessionClusterVapor",
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterAsync", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterNodeKit", package: "SessionClusterIntegrationSupport"),
                .product(name: "Vapor", package: "vapor"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/VaporNode"),
        .testTarget(
            name: "SessionClusterVaporTests",
            dependencies: [
                "SessionClusterVapor", "VaporNode",
                .product(name: "SessionCore", package: "SessionCluster"),
                .product(name: "SessionClusterAsync", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterNodeKit", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterTestKit", package: "SessionClusterIntegrationSupport"),
                .product(name: "SessionClusterTesting", package: "SessionCluster"),
                .product(name: "Vapor", package: "vapor"),
                .product(name: "VaporTesting", package: "vapor"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
