#if canImport(Glibc)
    import Glibc
#endif

/// File facts the agent polls and reads; each libc call wrapped here once.
public enum FileStatus {
    /// Modification time and size: enough to see an edit (nginx -s reload users rewrite files in place).
    public struct Stamp: Equatable, Sendable {
        public var seconds: Int
        public var nanoseconds: Int
        public var size: Int
        public var inode: UInt
    }

    public static func modificationStamp(_ path: String) -> Stamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Stamp(seconds: info.st_mtim.tv_sec, nanoseconds: info.st_mtim.tv_nsec, size: Int(info.st_size), inode: UInt(info.st_ino))
    }

    public static func readText(_ path: String) -> String? {
        guard let handle = fopen(path, "r") else { return nil }
        defer { fclose(handle) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, handle)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public static func isReadable(_ path: String) -> Bool { access(path, R_OK) == 0 }

    /// Paths matching a shell pattern, sorted (nginx's `include` semantics).
    public static func glob(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard Glibc.glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { result.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }
}
