import Netlink

/// The capabilities this process holds, read from /proc/self/status (CapEff).
public struct HostCapabilities: Sendable, Equatable {
    public let effective: UInt64

    public static let netAdmin = 12  // CAP_NET_ADMIN: sock_diag destroy, ctnetlink
    public static let sysAdmin = 21  // CAP_SYS_ADMIN: setns into other network namespaces
    /// CAP_SYS_PTRACE: open /proc/PID/ns/net of a process holding capabilities this one lacks
    /// (the kernel's ptrace access check wants the target's permitted set to be a subset of ours).
    public static let sysPtrace = 19

    public init(effective: UInt64) {
        self.effective = effective
    }

    public init?(statusText: String) {
        guard let line = statusText.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
            let value = UInt64(line.dropFirst("CapEff:".count).trimmingPrefix(while: \.isWhitespace), radix: 16)
        else { return nil }
        self.init(effective: value)
    }

    public static func current() -> HostCapabilities? {
        FileStatus.readText("/proc/self/status").flatMap(HostCapabilities.init(statusText:))
    }

    public func holds(_ capability: Int) -> Bool { effective & (1 << UInt64(capability)) != 0 }
}
