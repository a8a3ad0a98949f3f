import Logging
import OS
import ServiceLifecycle
import Synchronization

/// A service whose work is a blocking loop (epoll, an rtnetlink read) runs it on a thread of its own
/// in the agent's namespace, never on the cooperative pool, until the service group shuts down.
enum ThreadLoop {
    /// Runs `loop` until shutdown; `loop` asks `stopped()` at least every wait of its own (a fraction
    /// of a second) and returns once it says so. `what` names the loop in the warning when no
    /// thread can be had ("heartbeats off: no thread for them").
    static func run(
        _ what: String, logger: Logger,
        _ loop: @escaping @Sendable (_ stopped: @escaping @Sendable () -> Bool) throws(SystemCallError) -> Void
    ) async {
        let thread: NamespaceThread
        do { thread = try NamespaceThread(entering: nil) } catch {
            logger.warning("\(what) off: no thread for them", metadata: ["error": "\(error)"])
            return
        }
        let flag = StopFlag()
        thread.start { () throws(SystemCallError) in try loop { flag.isSet } }
        try? await gracefulShutdown()
        flag.set()
        thread.stop()
    }

    private final class StopFlag: Sendable {
        private let value = Atomic<Bool>(false)
        var isSet: Bool { value.load(ordering: .relaxed) }
        func set() { value.store(true, ordering: .relaxed) }
    }
}
