// swift-tools-version: 6.0
// Layers, bottom up; each target imports only the ones below it, and declares each one it imports
// (Tests/Checks/check_imports.py, run by `make test`, holds both to this comment):
//   CMnl, CNetfilterConntrack, CLinuxNetlink  C libraries and uapi headers
//   CBuildInfo                                 the git revision a release build was made from
//   NetworkAddress, Durations                  IP addresses, prefixes, destinations; durations as users write them (pure Swift)
//   OS                                         the one syscall wrapper, errno errors, files, resolver, namespaces, capabilities
//   Netlink                                    netlink sockets and messages: with OS, the only unsafe pointer code
//   SockDiag, Conntrack, Routing               the kernel interfaces conn-reaper acts through, and rtnetlink's news
//   Reaper                                     decides what goes (matchers) apart from ending it (purge)
//   Health                                     probes (tcp/http/https) and rise/fall state per backend
//   Agent                                      config, pools, reaping policy, metrics, HTTP endpoints, services
//   conn-reaper                                thin executable, one file per subcommand
import PackageDescription

/// Our own code builds with zero warnings; dependencies keep their own settings.
let strict: [SwiftSetting] = [.unsafeFlags(["-warnings-as-errors"])]

let package = Package(
    name: "conn-reaper",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "conn-reaper", targets: ["conn-reaper"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.7.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.20.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CMnl",
            pkgConfig: "libmnl",
            providers: [.apt(["libmnl-dev"])]
        ),
        .systemLibrary(
            name: "CNetfilterConntrack",
            pkgConfig: "libnetfilter_conntrack",
            providers: [.apt(["libnetfilter-conntrack-dev"])]
        ),
        .target(name: "CLinuxNetlink"),
        .target(name: "CBuildInfo"),
        .target(name: "NetworkAddress", swiftSettings: strict),
        .target(name: "Durations", swiftSettings: strict),
        .target(
            name: "OS",
            dependencies: ["CLinuxNetlink", "NetworkAddress", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .target(
            name: "Netlink",
            dependencies: ["CMnl", "CLinuxNetlink", "OS", "NetworkAddress", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .target(name: "SockDiag", dependencies: ["Netlink", "OS", "NetworkAddress"], swiftSettings: strict),
        .target(
            name: "Conntrack",
            dependencies: [
                "Netlink", "OS", "NetworkAddress", "CMnl", "CNetfilterConntrack",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        .target(name: "Routing", dependencies: ["Netlink", "OS", "NetworkAddress"], swiftSettings: strict),
        .target(
            name: "Reaper",
            dependencies: [
                "SockDiag", "Conntrack", "Netlink", "OS", "NetworkAddress", "Durations", "CBuildInfo",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Health",
            dependencies: [
                "NetworkAddress", "OS",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Agent",
            dependencies: [
                "Reaper", "Health", "Conntrack", "SockDiag", "Routing", "OS", "NetworkAddress", "Durations",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "conn-reaper",
            dependencies: [
                "Agent", "Reaper", "Health", "SockDiag", "Conntrack", "OS", "NetworkAddress", "Durations",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // libFuzzer targets (Tests/Fuzz, `make fuzz`): FUZZ_TARGET picks one; the everyday build replays files.
        .target(name: "FuzzHarness", path: "Tests/Fuzz/FuzzHarness", swiftSettings: strict),
        .executableTarget(
            name: "FuzzNetlink", dependencies: ["FuzzHarness", "Netlink", "SockDiag", "Conntrack", "Routing", "NetworkAddress"],
            path: "Tests/Fuzz/FuzzNetlink", swiftSettings: strict),
        .executableTarget(
            name: "FuzzConfig", dependencies: ["FuzzHarness", "Agent", "NetworkAddress", "Durations"], path: "Tests/Fuzz/FuzzConfig",
            swiftSettings: strict),
        // The deterministic simulation (Tests/Simulation): the agent's decisions against a fake world.
        .target(
            name: "Simulation",
            dependencies: [
                "Agent", "Health", "NetworkAddress", "OS", "Reaper", "SockDiag", .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/Simulation/Simulation",
            swiftSettings: strict),
        .executableTarget(name: "Simulate", dependencies: ["Simulation"], path: "Tests/Simulation/Simulate", swiftSettings: strict),
        .testTarget(name: "SimulationTests", dependencies: ["Simulation"], swiftSettings: strict),
        // One test target a layer, each importing only that layer and what it is built on; none needs root.
        .testTarget(name: "NetworkAddressTests", dependencies: ["NetworkAddress"], swiftSettings: strict),
        .testTarget(name: "OSTests", dependencies: ["OS"], swiftSettings: strict),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink"], swiftSettings: strict),
        .testTarget(name: "RoutingTests", dependencies: ["Routing", "Netlink", "NetworkAddress"], swiftSettings: strict),
        .testTarget(name: "SockDiagTests", dependencies: ["SockDiag", "Netlink", "NetworkAddress"], swiftSettings: strict),
        .testTarget(name: "ConntrackTests", dependencies: ["Conntrack", "Netlink", "NetworkAddress"], swiftSettings: strict),
        .testTarget(name: "HealthTests", dependencies: ["Health"], swiftSettings: strict),
        // The Reaper layer's pure decisions (PurgePlan, translated flows) and Purger against a fake kernel, without root.
        .testTarget(
            name: "ReaperTests", dependencies: ["Reaper", "SockDiag", "Conntrack", "Netlink", "OS", "NetworkAddress"], swiftSettings: strict
        ),
        .testTarget(
            name: "AgentTests",
            dependencies: [
                "Agent", "Health", "Reaper", "SockDiag", "Conntrack", "Netlink", "OS", "NetworkAddress", "Durations",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        // The command line's own parsing (ArgumentParser values and their refusals), without root.
        .testTarget(
            name: "ConnReaperTests",
            dependencies: [
                "conn-reaper", "NetworkAddress", "SockDiag", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
    ]
)
