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
        try? read(path).get()
    }

    /// Why a file could not be read, in words an operator acts on.
    public enum ReadFailure: Error, Equatable, CustomStringConvertible {
        case cannotOpen(String)
        case directory
        case tooLarge(bytes: Int, limit: Int)

        public var description: String {
            switch self {
            case .cannotOpen(let reason): "cannot be read (\(reason))"
            case .directory: "is a directory, not a file"
            case .tooLarge(let bytes, let limit): "is \(bytes) bytes, more than the \(limit) a configuration may have"
            }
        }
    }

    /// Configuration files are small: one larger than this is refused before it is read, so a
    /// runaway file cannot take the agent's memory with it.
    public static let readLimit = 4 << 20

    /// The whole file as text, at most `limit` bytes of it (more is an error, not a truncation).
    public static func read(_ path: String, limit: Int = readLimit) -> Result<String, ReadFailure> {
        guard let handle = fopen(path, "r") else { return .failure(.cannotOpen(String(cString: strerror(errno)))) }
        defer { fclose(handle) }
        var info = stat()
        if fstat(fileno(handle), &info) == 0 {
            if info.st_mode & S_IFMT == S_IFDIR { return .failure(.directory) }
            if Int(info.st_size) > limit { return .failure(.tooLarge(bytes: Int(info.st_size), limit: limit)) }
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, handle)
            if count <= 0 { break }
            bytes += chunk[0..<count]
            // A file that grows while it is read (or a pipe) is held to the same limit.
            if bytes.count > limit { return .failure(.tooLarge(bytes: bytes.count, limit: limit)) }
        }
        if ferror(handle) != 0 { return .failure(.cannotOpen(String(cString: strerror(errno)))) }
        return .success(String(decoding: bytes, as: UTF8.self))
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
