import Glibc
import OS
import Synchronization
import Testing

/// Background work runs on its caller's companion threads: as many as it has jobs running at once,
/// the same ones round after round, and gone once the caller's thread ends.
@Suite struct BackgroundWorkTests {
    /// The kernel's id of the calling thread, its entry in /proc/self/task: /proc/thread-self
    /// links to "PID/task/TID" (Glibc's gettid is not visible to Swift).
    static func threadID() -> Int32 {
        var link = [CChar](repeating: 0, count: 64)
        let length = readlink("/proc/thread-self", &link, link.count - 1)
        guard length > 0 else { return -1 }
        return Int32(String(decoding: link[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/").last!)!
    }

    static func exists(_ thread: Int32) -> Bool { access("/proc/self/task/\(thread)", F_OK) == 0 }

    static func threadCount() -> Int {
        guard let directory = opendir("/proc/self/task") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while readdir(directory) != nil { count += 1 }
        return count - 2  // "." and ".."
    }

    /// Two jobs at once, the first waiting (up to 5 s) for the second: only two threads make it.
    static func twoJobsAtOnce() throws(SystemCallError) -> (first: Int32, second: Int32, overlapped: Bool) {
        let secondStarted = Atomic<Bool>(false)
        let first = BackgroundWork { () -> (Int32, Bool) in
            let deadline = ContinuousClock.now + .seconds(5)
            while !secondStarted.load(ordering: .acquiring), ContinuousClock.now < deadline { usleep(1_000) }
            return (threadID(), secondStarted.load(ordering: .acquiring))
        }
        let second = BackgroundWork { () -> Int32 in
            secondStarted.store(true, ordering: .releasing)
            return threadID()
        }
        let (firstThread, overlapped) = try first.wait()
        return (firstThread, try second.wait(), overlapped)
    }

    @Test func jobsReuseTheCallersCompanionsWhichEndWithIt() async throws {
        let before = Self.threadCount()
        let owner = try NamespaceThread(entering: nil)
        let (ownerThread, rounds) = try await owner.run { () throws(SystemCallError) in
            var rounds: [(first: Int32, second: Int32, overlapped: Bool)] = []
            for _ in 0..<20 { rounds.append(try Self.twoJobsAtOnce()) }
            return (Self.threadID(), rounds)
        }
        let companions = Set(rounds.flatMap { [$0.first, $0.second] })
        #expect(rounds.allSatisfy { $0.overlapped })
        #expect(companions.count == 2)
        #expect(!companions.contains(ownerThread))
        #expect(companions.allSatisfy(Self.exists))
        let during = Self.threadCount()

        owner.stop()
        let deadline = ContinuousClock.now + .seconds(5)
        while Self.exists(ownerThread) || companions.contains(where: Self.exists), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(!Self.exists(ownerThread))
        #expect(!companions.contains(where: Self.exists))
        // Other tests run meanwhile in this process: the counts are a record, the ids the proof.
        print("threads: \(before) before, \(during) with the owner and its companions, \(Self.threadCount()) after")
    }

    @Test func aJobsResultAndErrorComeBack() throws {
        #expect(try BackgroundWork { () throws(SystemCallError) -> Int in 6 * 7 }.wait() == 42)
        let refused = SystemCallError(call: "test", argument: "refused", errno: .permissionDenied)
        #expect(throws: refused) { try BackgroundWork { () throws(SystemCallError) -> Int in throw refused }.wait() }
    }
}
