#if canImport(Glibc)
    import Glibc
#endif

/// The inodes of the sockets this process holds, from /proc/self/fd: how the agent recognises its
/// own probe connections in a dump (a socket mark would do it too, but CNIs route by marks).
public enum OwnSockets {
    public static func inodes() -> Set<UInt32> {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        var inodes = Set<UInt32>()
        var target = [CChar](repeating: 0, count: 64)
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.first?.isNumber == true else { continue }
            let length = readlink("/proc/self/fd/\(name)", &target, target.count - 1)
            guard length > 0 else { continue }
            let link = String(decoding: target[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // "socket:[12345]"
            guard link.hasPrefix("socket:["), link.hasSuffix("]"), let inode = UInt32(link.dropFirst(8).dropLast()) else { continue }
            inodes.insert(inode)
        }
        return inodes
    }
}
