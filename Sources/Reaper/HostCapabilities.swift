import OS

/// The capabilities this process holds, and the ones conn-reaper's features need.
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

    /// The calling thread's effective set (every thread of conn-reaper holds the same one), read
    /// the one way the agent reads capabilities: capget.
    public static func current() -> HostCapabilities? {
        (try? ProcessCapabilities.current()).map { HostCapabilities(effective: $0.effective) }
    }

    public func holds(_ capability: Int) -> Bool { effective & (1 << UInt64(capability)) != 0 }
}
