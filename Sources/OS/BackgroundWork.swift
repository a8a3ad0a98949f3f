import Dispatch

/// Runs one blocking netlink job on another thread while the caller does its own, then hands the
/// result back. The job's objects (sockets bound to a namespace) are handed over, never shared:
/// the caller does not touch them until `wait()` returns, which is what makes this sound.
public final class BackgroundWork<Value>: @unchecked Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private var result: Result<Value, SystemCallError>?

    public init(_ job: @escaping () throws(SystemCallError) -> Value) {
        nonisolated(unsafe) let job = job
        DispatchQueue.global().async { [self] in
            result = Result { () throws(SystemCallError) -> Value in try job() }
            finished.signal()
        }
    }

    public func wait() throws(SystemCallError) -> Value {
        finished.wait()
        return try result!.get()
    }
}
