import Synchronization

/// Runs one blocking job on another thread while the caller does its own work, then hands the
/// result back: the parallel IPv6 dump beside the IPv4 one, the conntrack dump beside the socket
/// work. The job's objects (sockets bound to a namespace) are handed over, never shared: the caller
/// does not touch them until `wait()` returns. The thread is one of the caller's companions
/// (CompanionThreads): a NamespaceThread in the caller's namespace, kept for the caller's next job.
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
        let companions = CompanionThreads.ofCallingThread
        let companion: NamespaceThread
        do { companion = try companions.borrow() } catch {
            slot.fill(.failure(error))
            return
        }
        let taken = companion.enqueue { _ in
            let outcome = Result { () throws(SystemCallError) -> Value in try handoff.job() }
            companions.giveBack(companion)
            slot.fill(outcome)
        }
        if !taken { slot.fill(.failure(NamespaceThread.stoppedError)) }
    }

    public func wait() throws(SystemCallError) -> Value {
        slot.finished.wait()
        return try slot.result.withLock { $0! }.get()
    }
}

/// The job and what it captured cross to a companion thread once and are used there alone until
/// `wait()` returns: a hand-over, never a share, which is why this box may be sent. It holds
/// because the job is queued once and run once; the companion fills the slot only after the job
/// returned, and `wait()` returns only after that (the semaphore orders them); and each caller
/// waits before it returns or throws, touching nothing the job captured until then (SocketDiagnostics:
/// dumpSocket6, destroySocket2; ConntrackTable: dumpSocket2; Purger: its conntrack table, whose
/// other uses come after the wait or run only without a prefetch). `sending` would let the compiler
/// check it, but it refuses a socket that is a stored property of the caller's object.
private struct Handoff<Value>: @unchecked Sendable {
    let job: () throws(SystemCallError) -> Value
}
