import Synchronization

/// A value one thread settles once and others wait for: a decision a background job needs midway
/// (whether a purge's dump must list the direct flows, known once the sockets are counted).
/// Later settles are ignored, so a fallback can settle unconditionally after the usual path.
public final class OneShot<Value: Sendable>: Sendable {
    private let value = Mutex<Value?>(nil)
    private let settled = Semaphore()

    public init() {}

    public func settle(_ newValue: Value) {
        let first = value.withLock { current in
            guard current == nil else { return false }
            current = newValue
            return true
        }
        if first { settled.signal() }
    }

    public func wait() -> Value {
        if let known = value.withLock({ $0 }) { return known }
        settled.wait()
        settled.signal()  // every other waiter gets through too
        return value.withLock { $0! }
    }
}
