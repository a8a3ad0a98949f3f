import Glibc
import OS
import Testing

/// A memo is read back only in the boot that wrote it, and only when nobody else could have written it.
@Suite struct BootScopedMemoTests {
    /// A fresh directory of this user's, removed with what is in it after `body`.
    static func inDirectory(_ body: (String) throws -> Void) rethrows {
        var template = Array("/tmp/conn-reaper-memo-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        let directory = String(cString: made!)
        defer { _ = system("rm -rf '\(directory)'") }
        try body(directory)
    }

    static func write(_ text: String, to path: String) {
        let file = fopen(path, "w")!
        fputs(text, file)
        fclose(file)
    }

    @Test func remembersForTheSameBootOnly() {
        Self.inDirectory { directory in
            let runtime = "\(directory)/run"
            let memo = BootScopedMemo(name: "fact", directory: runtime, boot: "boot-a")
            #expect(memo.recall() == nil)
            #expect(memo.remember("trusted"))
            #expect(memo.recall() == "trusted")
            #expect(BootScopedMemo(name: "fact", directory: runtime, boot: "boot-b").recall() == nil)
            #expect(BootScopedMemo(name: "other", directory: runtime, boot: "boot-a").recall() == nil)
            #expect(memo.remember("compares-wrongly a flush took it"))
            #expect(memo.recall() == "compares-wrongly a flush took it")
            var status = stat()
            #expect(stat(runtime, &status) == 0 && status.st_mode & 0o777 == 0o700)
            #expect(stat(memo.path, &status) == 0 && status.st_mode & 0o777 == 0o600)
        }
    }

    @Test func theCurrentBootIsTheKernelsBootID() {
        let boot = BootScopedMemo.currentBoot()
        #expect(boot?.count == 36, "boot_id is a UUID: \(boot ?? "none")")
    }

    @Test func aMemoOthersCouldHaveWrittenIsNotBelieved() {
        Self.inDirectory { directory in
            let memo = BootScopedMemo(name: "fact", directory: directory, boot: "boot-a")
            #expect(memo.remember("trusted"))
            chmod(memo.path, 0o620)
            #expect(memo.recall() == nil, "a group-writable file")
            chmod(memo.path, 0o600)
            #expect(memo.recall() == "trusted")
            chmod(directory, 0o777)
            #expect(memo.recall() == nil, "a world-writable directory")
            #expect(!memo.remember("refused"), "nor written into one")
            chmod(directory, 0o700)

            Self.write("boot-a refused\n", to: "\(directory)/elsewhere")
            unlink(memo.path)
            symlink("\(directory)/elsewhere", memo.path)
            #expect(memo.recall() == nil, "a link is not followed")
        }
    }

    @Test func aTornOrForeignLineIsNoMemo() {
        Self.inDirectory { directory in
            let memo = BootScopedMemo(name: "fact", directory: directory, boot: "boot-a")
            for text in ["boot-a trusted", "boot-atrusted\n", "", "boot-b trusted\n", " boot-a trusted\n"] {
                Self.write(text, to: memo.path)
                #expect(memo.recall() == nil, "\(text.debugDescription)")
            }
            Self.write("boot-a trusted\n", to: memo.path)
            #expect(memo.recall() == "trusted")
            #expect(!memo.remember("two\nlines"))
            #expect(BootScopedMemo(name: "fact", directory: directory, boot: nil).recall() == nil, "no boot id: no memo")
        }
    }
}
