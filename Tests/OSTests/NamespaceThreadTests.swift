import Glibc
import OS
import Synchronization
import Testing

/// The one way kernel work runs in a namespace: jobs in order on one OS thread, an unenterable
/// namespace failing each job with the call that failed, nothing accepted after stop.
@Suite struct NamespaceThreadTests {
    @Test func jobsRunInOrderOnOneThread() async throws {
        let thread = try NamespaceThread(entering: nil)
        defer { thread.stop() }
        let seen = Mutex<[Int]>([])
        var threads = Set<UInt>()
        for index in 0..<20 {
            let id = try await thread.run { () throws(SystemCallError) -> UInt in
                seen.withLock { $0.append(index) }
                return UInt(pthread_self())
            }
            threads.insert(id)
        }
        #expect(seen.withLock { $0 } == Array(0..<20))
        #expect(threads.count == 1)
        #expect(try thread.runAndWait { () throws(SystemCallError) -> Int in 42 } == 42)
    }

    @Test func aNamespaceThatCannotBeEnteredFailsEveryJobNamingTheCall() async throws {
        let thread = try NamespaceThread(entering: "/run/netns/conn-reaper-test-no-such-namespace")
        defer { thread.stop() }
        for _ in 0..<2 {
            do {
                _ = try await thread.run { () throws(SystemCallError) -> Int in 1 }
                Issue.record("a job ran outside its namespace")
            } catch {
                #expect(error.call.hasPrefix("open(/run/netns/conn-reaper-test-no-such-namespace)"))
                #expect(error.name == "open")  // the metrics label: one series whatever the path
                #expect(error.errno == .noSuchFileOrDirectory)
            }
        }
    }

    @Test func runOrInPlaceUsesTheThreadUntilItIsStoppedThenTheCaller() async throws {
        let thread = try NamespaceThread(entering: nil)
        let threadItself = try thread.runAndWait { () throws(SystemCallError) -> UInt in UInt(pthread_self()) }
        #expect(await thread.runOrInPlace { UInt(pthread_self()) } == threadItself)
        thread.stop()
        await #expect(throws: SystemCallError.self) { try await thread.run { () throws(SystemCallError) -> Int in 1 } }
        #expect(await thread.runOrInPlace { 6 * 7 } == 42)
    }

    @Test func nothingRunsAfterStop() throws {
        let thread = try NamespaceThread(entering: nil)
        thread.stop()
        #expect(throws: SystemCallError.self) { try thread.runAndWait { () throws(SystemCallError) -> Int in 1 } }
    }
}
