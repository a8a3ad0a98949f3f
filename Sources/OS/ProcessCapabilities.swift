import CLinuxNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// The process's capability sets, and shedding all but the ones it uses.
public enum ProcessCapabilities {
    public struct Sets: Equatable, Sendable {
        public var effective: UInt64
        public var permitted: UInt64
        public var inheritable: UInt64
    }

    /// The calling thread's sets (every thread of conn-reaper holds the same ones).
    public static func current() throws(SystemCallError) -> Sets {
        var sets = Sets(effective: 0, permitted: 0, inheritable: 0)
        try systemCall("capget") { c_reaper_capget(&sets.effective, &sets.permitted, &sets.inheritable) }
        return sets
    }

    static let setpcap = 8  // CAP_SETPCAP: needed to shrink the bounding set

    /// Re-executes this program holding only `capabilities`, when it holds more.
    ///
    /// Capabilities are per thread and an agent has many (event loops, the cooperative pool), so
    /// `capset` on one thread drops nothing for the others. Instead: the bounding set shrinks to
    /// `capabilities`, they go into the inheritable and ambient sets, and an exec from this same
    /// thread starts the program again with exactly them, for root and non-root alike. `marker`
    /// is set in the environment so the new image does not do it again. Returns without exec when
    /// there is nothing to shed, or when it cannot be done (no CAP_SETPCAP): the caller logs that.
    public static func reexecRetaining(_ capabilities: Set<Int>, marker: String) throws(SystemCallError) {
        let keep = capabilities.reduce(UInt64(0)) { $0 | 1 << UInt64($1) }
        let sets = try current()
        guard (sets.permitted | sets.effective) & ~keep != 0, getenv(marker) == nil else { return }
        guard sets.effective & (1 << UInt64(setpcap)) != 0 else {
            throw SystemCallError(call: "prctl", argument: "PR_CAPBSET_DROP", errno: .notPermitted)
        }
        for capability in 0...Int(c_reaper_last_capability()) where keep & (1 << UInt64(capability)) == 0 {
            guard c_reaper_drop_bounding(Int32(capability)) == 0 || Glibc.errno == EINVAL else {
                throw SystemCallError(call: "prctl", argument: "PR_CAPBSET_DROP", code: Glibc.errno)
            }
        }
        try systemCall("capset") { c_reaper_capset(sets.effective, sets.permitted, sets.permitted & keep) }
        for capability in capabilities where sets.permitted & (1 << UInt64(capability)) != 0 {
            try systemCall("prctl", argument: "PR_CAP_AMBIENT_RAISE") { c_reaper_raise_ambient(Int32(capability)) }
        }
        setenv(marker, "1", 1)
        let arguments = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", arguments)
        throw SystemCallError(call: "execv", argument: "/proc/self/exe", code: Glibc.errno)
    }
}
