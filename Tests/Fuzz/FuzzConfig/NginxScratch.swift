import Agent
import NetworkAddress

#if canImport(Glibc)
    import Glibc
#endif

/// nginx.conf and the files it may include, in a scratch folder made once. The input is split at
/// each `\n#---\n` into the main file and up to three others; the files on disk exist for the
/// include globs to find, their contents come from memory so each run writes nothing.
final class NginxScratch: @unchecked Sendable {
    static let shared = NginxScratch()

    let directory: String
    var includedNames: ArraySlice<String> { Self.fileNames.dropFirst() }

    init() {
        var template = Array("/tmp/conn-reaper-fuzz-nginx.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fatalError("mkdtemp: \(errno)") }
        directory = String(cString: made)
        mkdir("\(directory)/conf.d", 0o755)
        for name in Self.fileNames {
            let file = fopen("\(directory)/\(name)", "w")
            fclose(file)
        }
        Self.made = directory
        // libFuzzer ends with exit(): the folder goes with the process (a crash leaves it for inspection).
        atexit {
            guard let directory = NginxScratch.made else { return }
            for name in NginxScratch.fileNames { unlink("\(directory)/\(name)") }
            rmdir("\(directory)/conf.d")
            rmdir(directory)
        }
    }

    static let fileNames = ["nginx.conf", "conf.d/a.conf", "conf.d/b.conf", "stream.conf"]
    nonisolated(unsafe) static var made: String?

    func parse(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard Self.staysInScratch(text) else { return }
        let parts = text.split(separator: "\n#---\n", omittingEmptySubsequences: false)
        var files = ["\(directory)/nginx.conf": String(parts[0])]
        for (name, text) in zip(includedNames, parts.dropFirst()) { files["\(directory)/\(name)"] = String(text) }
        guard let directives = try? NginxConfigParser.parse(path: "\(directory)/nginx.conf", readFile: { files[$0] }) else { return }
        // Names resolve without DNS: `backend-N` to N addresses, anything else to none.
        _ = try? NginxUpstreams.upstreams(in: directives) { host in
            guard host.hasPrefix("backend-"), let count = Int(host.dropFirst(8)), (0...4).contains(count) else { return [] }
            return (0..<count).map { .v4(0x0A00_0001 + UInt32($0)) }
        }
    }

    /// Includes may only name files in the scratch folder: a path that starts with `/` or climbs
    /// with `..` would glob and read the machine's own files (a `/proc/*/*` glob alone takes seconds).
    static func staysInScratch(_ text: String) -> Bool {
        var previous: Unicode.Scalar = " "
        for scalar in text.unicodeScalars {
            if scalar == "/",
                !(previous.properties.isAlphabetic || ("0"..."9").contains(previous) || "._-*?".unicodeScalars.contains(previous))
            {
                return false
            }
            previous = scalar
        }
        return !text.contains("..")
    }
}
