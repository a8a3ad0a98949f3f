import Foundation
import Testing

@testable import OS

/// /proc parsing for the process_* metrics: a command name with spaces and parentheses, and the
/// live process (which must read as itself).
@Suite struct ProcessStatisticsTests {
    @Test func fieldsAreCountedFromTheLastParenthesis() throws {
        let stat =
            "4242 (conn (reaper) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 150 0 0 20 0 9 0 100000 700000000 8000 "
            + "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0"
        let statistics = try #require(
            ProcessStatistics.parse(
                stat: stat, statm: "170000 8000 3000 100 0 20000 0\n", systemStat: "cpu  1 2 3\nbtime 1764633600\nprocesses 9\n",
                ticksPerSecond: 100, pageSize: 4096, openFileDescriptors: 12, maxFileDescriptors: 1024))
        #expect(statistics.cpuSeconds == 4.0)  // (250 + 150) ticks / 100
        #expect(statistics.residentBytes == 8000 * 4096)
        #expect(statistics.startTime == 1_764_633_600 + 1000)  // btime + 100000 ticks / 100
        #expect(statistics.openFileDescriptors == 12)
    }

    @Test func garbageReadsAsNothing() {
        #expect(
            ProcessStatistics.parse(
                stat: "no parenthesis", statm: "", systemStat: "", ticksPerSecond: 100, pageSize: 4096, openFileDescriptors: 0,
                maxFileDescriptors: 0) == nil)
    }

    @Test func thisProcessReadsAsALiveProcess() throws {
        let now = ProcessStatistics.unixTime()
        let statistics = try #require(ProcessStatistics.current())
        #expect(statistics.residentBytes > 1_000_000)
        #expect(statistics.startTime > now - 86_400 && statistics.startTime <= now + 1)
        #expect(statistics.openFileDescriptors >= 3 && statistics.openFileDescriptors < statistics.maxFileDescriptors)
    }
}

/// Reading a configuration file: what is wrong is named, and a file too large is refused unread.
@Suite struct FileReadTests {
    @Test func aDirectoryATooLargeFileAndAMissingOneAreNamed() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("read-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("c.yaml")
        try "pools: []\n".write(to: file, atomically: true, encoding: .utf8)
        #expect(FileStatus.read(file.path) == .success("pools: []\n"))
        #expect(FileStatus.read(file.path, limit: 4) == .failure(.tooLarge(bytes: 10, limit: 4)))
        #expect(FileStatus.read(directory.path) == .failure(.directory))
        guard case .failure(.cannotOpen(let reason)) = FileStatus.read(directory.appendingPathComponent("none").path) else {
            Issue.record("a missing file must fail")
            return
        }
        #expect(reason.contains("No such file"))
    }
}
