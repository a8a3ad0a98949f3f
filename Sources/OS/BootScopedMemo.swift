#if canImport(Glibc)
    import Glibc
#endif
import SystemPackage

/// One line a process leaves for the next ones of the same boot: what it learnt of the kernel at a
/// cost (the flush canary's four or five walks of the conntrack table) that a one-shot command should
/// not pay again each time. The file lives under /run (emptied at boot) and names the boot it was
/// written in (`/proc/sys/kernel/random/boot_id`, new at every boot and kexec), so a line from an
/// earlier kernel, or from a VM sharing this file system, is never read as this one's.
///
/// A memo steers what the process does to the host's tables, so it is believed only when nobody but
/// this user could have written it: the directory and the file owned by this user (or root) and
/// writable by no one else, read without following a link. Anything else reads as no memo: the
/// process learns the fact itself. Writing is best effort (a read-only /run, another user's
/// directory): a memo that cannot be left costs the next process the work, never a wrong answer.
public struct BootScopedMemo: Sendable {
    /// Where the memos live: `CONN_REAPER_RUNTIME_DIRECTORY` if set (tests keep the host's /run
    /// untouched), else /run/conn-reaper.
    public static var defaultDirectory: String {
        getenv("CONN_REAPER_RUNTIME_DIRECTORY").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/run/conn-reaper"
    }

    public let directory: String
    public let name: String
    /// The boot the memo belongs to; nil when it cannot be read (then nothing is read or written).
    let boot: String?

    public init(name: String, directory: String = BootScopedMemo.defaultDirectory, boot: String? = BootScopedMemo.currentBoot()) {
        precondition(!name.isEmpty && !name.contains("/"), "a memo's name is one file name")
        self.directory = directory
        self.name = name
        self.boot = boot
    }

    public var path: String { "\(directory)/\(name)" }

    /// This boot's identity: the kernel's random boot id.
    public static func currentBoot() -> String? {
        guard let text = FileStatus.readText("/proc/sys/kernel/random/boot_id") else { return nil }
        let words = text.split(whereSeparator: \.isWhitespace)
        return words.count == 1 ? String(words[0]) : nil
    }

    /// The text left in this boot, when the memo is there and trustworthy.
    public func recall() -> String? {
        guard let boot, Self.isOnlyOurs(FilePath(directory), directory: true) else { return nil }
        guard let descriptor = try? FileDescriptor.open(FilePath(path), .readOnly, options: [.noFollow, .closeOnExec]) else {
            return nil
        }
        defer { try? descriptor.close() }
        guard let status = try? descriptor.stat(), Self.isOnlyOurs(status, directory: false), status.size <= 4096 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(status.size))
        guard let count = try? bytes.withUnsafeMutableBytes({ try descriptor.read(into: $0) }) else { return nil }
        let line = String(decoding: bytes[0..<count], as: UTF8.self)
        guard line.hasSuffix("\n"), let space = line.firstIndex(of: " "), line[..<space] == boot else { return nil }
        return String(line[line.index(after: space)...].dropLast())
    }

    /// Leaves `text` (one line) for this boot's later processes; false when it could not.
    @discardableResult
    public func remember(_ text: String) -> Bool {
        guard let boot, !text.contains("\n") else { return false }
        _ = try? systemCall("mkdir", argument: directory) { mkdir(directory, 0o700) }
        guard Self.isOnlyOurs(FilePath(directory), directory: true) else { return false }
        // Written beside and renamed over: a reader sees the old line or the new one, never half.
        let partial = "\(path).\(getpid())"
        guard
            let descriptor = try? FileDescriptor.open(
                FilePath(partial), .writeOnly, options: [.create, .truncate, .noFollow, .closeOnExec],
                permissions: [.ownerReadWrite])
        else { return false }
        let written = (try? descriptor.writeAll(Array("\(boot) \(text)\n".utf8))) != nil
        try? descriptor.close()
        guard written, (try? systemCall("rename", argument: partial, { rename(partial, path) })) != nil else {
            unlink(partial)
            return false
        }
        return true
    }

    /// Owned by this user or root, and writable by nobody else.
    static func isOnlyOurs(_ status: Stat, directory: Bool) -> Bool {
        let owner = status.userID.rawValue
        let othersWrite: FilePermissions = [.groupWrite, .otherWrite]
        return (owner == geteuid() || owner == 0) && status.permissions.isDisjoint(with: othersWrite)
            && status.type == (directory ? .directory : .regular)
    }

    static func isOnlyOurs(_ path: FilePath, directory: Bool) -> Bool {
        guard let status = try? path.stat(followTargetSymlink: false) else { return false }
        return isOnlyOurs(status, directory: directory)
    }
}
