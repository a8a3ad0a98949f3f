import Synchronization

/// Runs one blocking job on a thread of its own while the caller does its own work, then hands the
/// result back: the parallel IPv6 dump beside the IPv4 one, the conntrack dump beside the socket
/// work. The job's objects (sockets bound to a namespace) are handed over, never shared: the caller
/// does not touch them until `wait()` returns. The thread is a NamespaceThread that stays in the
/// caller's namespace: the one way this code base runs kernel work off the calling thread.
public final class BackgroundWork<Value: Sendable>: Sendable {
    private let slot = Slot()

    private final class Slot: Sendable {
        let result = Mutex<Result<Value, SystemCallError>?>(nil)
        let finished = Semaphore()

        func fill(_ outcome: Result<Value, SystemCallError>) {
            result.withLock { $0 = outcome }
            finished.signal()
        }
    }

    public init(_ job: @escaping () throws(SystemCallError) -> Value) {
        let handoff = Handoff(job: job)
        let slot = self.slot
        do {
            let thread = try NamespaceThread(entering: nil)
            thread.start { () throws(SystemCallError) in
                slot.fill(Result { () throws(SystemCallError) -> Value in try handoff.job() })
            }
            thread.stop()
        } catch {
            slot.fill(.failure(error))
        }
    }

    public func wait() throws(SystemCallError) -> Value {
        slot.finished.wait()
        return try slot.result.withLock { $0! }.get()
    }
}

/// The job and what it captured cross to the background thread once and are used there alone
/// until `wait()` returns: a hand-over, never a share, which is why this box may be sent.
private struct Handoff<Value>: @unchecked Sendable {
    let job: () throws(SystemCallError) -> Value
}
