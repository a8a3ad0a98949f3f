import OS

extension SystemCallError {
    /// What an operator should do about a failure the kernel reported, where there is something to do.
    public var hint: String? {
        switch errno {
        case .notPermitted:
            return "needs CAP_NET_ADMIN in this network namespace"
        case .notSupported where operation == .socketDestroy:
            return "kernel built without CONFIG_INET_DIAG_DESTROY"
        case .notSupported, .protocolNotSupported:
            return layer == .conntrack ? "conntrack netlink unavailable (is nf_conntrack_netlink loaded?)" : nil
        default:
            return nil
        }
    }

    /// A conntrack layer that is simply absent (no nf_conntrack in this kernel or namespace) means
    /// there is nothing to delete, not that the purge failed.
    public var meansConntrackAbsent: Bool {
        layer == .conntrack && (errno == .protocolNotSupported || errno == .notSupported)
    }
}
