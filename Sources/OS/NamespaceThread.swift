import CLinuxNetlink
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One OS thread that first enters a network namespace (or stays in the one it was started in) and
/// then runs jobs one at a time, in order, until it is stopped: the one way kernel work runs in a
/// namespace, for the agent's workers and the CLI's `--netns` alike. A netlink socket belongs to
/// the namespace of the thread that opened it, and Swift tasks hop threads, so such work is never
/// done on a cooperative-pool thread.
public final class NamespaceThread: Sendable {
    private struct Queue {
        var jobs: [@Sendable (SystemCallError?) -> Void] = []
        var stopping = false
    }

    /// The namespace file entered first; nil: the starting thread's own.
    public let namespace: String?
    private let queue = Mutex(Queue())
    private let pending = Semaphore()

    /// Starts the thread; a namespace that cannot be entered fails every job with that error.
    public init(entering namespace: String?) throws(SystemCallError) {
        self.namespace = namespace
        let box = Unmanaged.passRetained(Loop(owner: self)).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(
            &thread, nil,
            { context in
                Unmanaged<Loop>.fromOpaque(context!).takeRetainedValue().run()
                return nil
            }, box)
        guard created == 0 else {
            Unmanaged<Loop>.fromOpaque(box).release()
            throw SystemCallError(call: "pthread_create", code: created)
        }
        pthread_detach(thread)
    }

    /// Runs `body` on the thread and returns what it returns.
    public func run<Value: Sendable>(_ body: @escaping @Sendable () throws(SystemCallError) -> Value) async throws(SystemCallError) -> Value
    {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Value, SystemCallError>, Never>) in
            guard enqueue({ entering in continuation.resume(returning: Self.outcome(entering, body)) }) else {
                continuation.resume(returning: .failure(Self.stoppedError))
                return
            }
        }
        return try result.get()
    }

    /// Runs `body` on the thread, or in place once the thread was stopped: for blocking work with no
    /// namespace to keep, only a thread of the cooperative pool to spare.
    public func runOrInPlace<Value: Sendable>(_ body: @escaping @Sendable () -> Value) async -> Value {
        do { return try await run(body) } catch { return body() }
    }

    /// The same, for a caller that may block (the CLI): waits for the thread.
    public func runAndWait<Value: Sendable>(_ body: @escaping @Sendable () throws(SystemCallError) -> Value) throws(SystemCallError)
        -> Value
    {
        let done = Semaphore()
        let slot = Mutex<Result<Value, SystemCallError>?>(nil)
        guard
            enqueue({ entering in
                slot.withLock { $0 = Self.outcome(entering, body) }
                done.signal()
            })
        else { throw Self.stoppedError }
        done.wait()
        return try slot.withLock { $0! }.get()
    }

    /// Queues `body` and returns at once; what it throws goes nowhere (it reports through its own state).
    /// False: the thread was stopped, and `body` will never run.
    @discardableResult
    public func start(_ body: @escaping @Sendable () throws(SystemCallError) -> Void) -> Bool {
        enqueue { entering in if entering == nil { try? body() } }
    }

    /// Ends the thread once the jobs already queued have run.
    public func stop() {
        queue.withLock { $0.stopping = true }
        pending.signal()
    }

    /// What a job gets from a thread that was stopped (or never started).
    public static let stoppedError = SystemCallError(call: "NamespaceThread", argument: "stopped", errno: .badFileDescriptor)

    private static func outcome<Value>(
        _ entering: SystemCallError?, _ body: () throws(SystemCallError) -> Value
    ) -> Result<Value, SystemCallError> {
        if let entering { return .failure(entering) }
        do { return .success(try body()) } catch { return .failure(error) }
    }

    /// Whether the job was taken: a stopped thread takes none.
    func enqueue(_ job: @escaping @Sendable (SystemCallError?) -> Void) -> Bool {
        let accepted = queue.withLock { queue in
            guard !queue.stopping else { return false }
            queue.jobs.append(job)
            return true
        }
        if accepted { pending.signal() }
        return accepted
    }

    /// The thread's own side: enter, then serve jobs until stopped and drained.
    private final class Loop {
        let owner: NamespaceThread
        init(owner: NamespaceThread) { self.owner = owner }

        func run() {
            var entering: SystemCallError?
            if let namespace = owner.namespace {
                do { try NetworkNamespace.enter(namespace) } catch { entering = error }
            }
            while true {
                owner.pending.wait()
                let (job, finished) = owner.queue.withLock { queue -> ((@Sendable (SystemCallError?) -> Void)?, Bool) in
                    if queue.jobs.isEmpty { return (nil, queue.stopping) }
                    return (queue.jobs.removeFirst(), false)
                }
                if let job { job(entering) }
                if finished { return }
            }
        }
    }
}

/// A counting POSIX semaphore. Why its unchecked Sendable is sound: sem_t is made for sharing
/// between threads (sem_post and sem_wait may be called on one from any thread at once), and it
/// must never move, so it lives in memory allocated once, at a fixed address, for the object's
/// whole life, held by a constant. `deinit` destroys it
/// only once no thread holds the object, so none is waiting on it.
final class Semaphore: @unchecked Sendable {
    private let pointer = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)

    init() {
        sem_init(pointer, 0, 0)
    }

    deinit {
        sem_destroy(pointer)
        pointer.deallocate()
    }

    func signal() { sem_post(pointer) }

    func wait() {
        while sem_wait(pointer) != 0 && errno == EINTR {}
    }
}
