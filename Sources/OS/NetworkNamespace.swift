import CLinuxNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// Network namespaces named by a file (`/run/netns/NAME`, `/proc/PID/ns/net`): entering one on the
/// calling thread, telling two apart, finding them all. Each call wrapped here once.
///
/// A netlink socket belongs to the namespace of the thread that created it, wherever it is used
/// later; so a namespace is entered on a dedicated OS thread, never on a Swift concurrency thread
/// (tasks hop threads, and the cooperative pool's threads are shared).
public enum NetworkNamespace {
    /// What names a namespace: the device and inode of its nsfs file (paths differ, this does not).
    public struct Identity: Hashable, Sendable, CustomStringConvertible {
        public var device: UInt64
        public var inode: UInt64
        public var description: String { "net:[\(inode)]" }
    }

    /// The namespace a path names, or nil when it cannot be looked at (gone, not permitted).
    /// The file a user means: a path as given, a bare NAME as /run/netns/NAME (what `ip -n NAME` and
    /// `ss -N NAME` take). Nil for a name that could not be one (empty, ".", "..").
    public static func path(naming text: String) -> String? {
        if text.hasPrefix("/") { return text }
        guard !text.isEmpty, text != ".", text != "..", !text.contains("/") else { return nil }
        return "/run/netns/\(text)"
    }

    public static func identity(of path: String) -> Identity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// Moves the calling thread into the namespace `path` names: open(O_RDONLY|O_CLOEXEC), then
    /// setns(CLONE_NEWNET), which needs CAP_SYS_ADMIN (in the namespace's owning user namespace too).
    /// Opening /proc/PID/ns/net needs ptrace read access to PID.
    public static func enter(_ path: String) throws(SystemCallError) {
        let descriptor = try systemCall("open", argument: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(descriptor) }
        try systemCall("setns", argument: path) { c_reaper_setns_net(descriptor) }
    }

    /// One path per network namespace on the node: /run/netns/* first (their names are stable),
    /// then /proc/PID/ns/net of every process whose namespace is not named yet. What cannot be
    /// looked at (a process that exited, one we may not inspect) is skipped.
    public static func all() -> [(path: String, identity: Identity)] {
        var found: [(path: String, identity: Identity)] = []
        var seen = Set<Identity>()
        func add(_ path: String) {
            guard let identity = identity(of: path), seen.insert(identity).inserted else { return }
            found.append((path, identity))
        }
        for name in entries(of: "/run/netns").sorted() { add("/run/netns/\(name)") }
        for name in entries(of: "/proc") where name.allSatisfy(\.isNumber) {
            add("/proc/\(name)/ns/net")
        }
        return found
    }

    private static func entries(of directory: String) -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }
}
