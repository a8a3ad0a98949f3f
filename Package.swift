// swift-tools-version: 6.0
// Layers, bottom up; each target imports only the ones below it:
//   CMnl, CNetfilterConntrack, CLinuxNetlink  C libraries and uapi headers
//   NetworkAddress                             IP addresses, prefixes, destinations (pure Swift)
//   Netlink                                    sockets, messages, errors: the only unsafe pointer code
//   SockDiag, Conntrack                        the two kernel interfaces conn-reaper acts through
//   Reaper                                     decides what goes (matchers) apart from ending it (purge)
//   conn-reaper                                thin executable, one file per subcommand
import PackageDescription

let package = Package(
    name: "conn-reaper",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "conn-reaper", targets: ["conn-reaper"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
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
        .target(name: "NetworkAddress"),
        .target(
            name: "Netlink",
            dependencies: [
                "CMnl", "CNetfilterConntrack", "CLinuxNetlink", "NetworkAddress",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(name: "SockDiag", dependencies: ["Netlink", "NetworkAddress"]),
        .target(name: "Conntrack", dependencies: ["Netlink", "NetworkAddress"]),
        .target(name: "Reaper", dependencies: ["SockDiag", "Conntrack", "NetworkAddress"]),
        .executableTarget(
            name: "conn-reaper",
            dependencies: [
                "Reaper",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "NetworkAddressTests", dependencies: ["NetworkAddress"]),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink", "SockDiag", "Conntrack", "CLinuxNetlink", "CNetfilterConntrack"]),
    ]
)
