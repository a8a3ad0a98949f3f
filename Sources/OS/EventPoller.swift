import CLinuxNetlink
#if canImport(Glibc)
    import Glibc
#endif

/// A wake-up for an `EventPoller` that other threads may pull: an eventfd the poller watches.
public struct PollerWakeup: Sendable {
    let descriptor: Int32

    public init() throws(SystemCallError) {
        descriptor = try systemCall("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    /// Makes the poller's wait return now (or its next one, if it is not waiting).
    public func wake() {
        var one: UInt64 = 1
        _ = write(descriptor, &one, MemoryLayout<UInt64>.size)
    }

    /// Closes the eventfd: only once no thread can pull it any more.
    public func close() {
        _ = Glibc.close(descriptor)
    }
}

/// An epoll instance for a loop that is not NIO's (the tcp probes' own thread): descriptors
/// watched once at a time, for writability then readability, and a wake-up. Used by the one thread that made it.
public final class EventPoller {
    private let epoll: Int32
    private let wakeup: PollerWakeup
    private let capacity = 256
    private let events: UnsafeMutablePointer<epoll_event>
    /// The token of the wake-up's own events.
    private static let wakeupToken = UInt64.max

    public init(wakeup: PollerWakeup) throws(SystemCallError) {
        epoll = try systemCall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        self.wakeup = wakeup
        events = .allocate(capacity: capacity)
        do throws(SystemCallError) {
            var event = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(u64: Self.wakeupToken))
            try systemCall("epoll_ctl", argument: "ADD") { epoll_ctl(epoll, EPOLL_CTL_ADD, wakeup.descriptor, &event) }
        } catch {
            _ = close(epoll)
            events.deallocate()
            throw error
        }
    }

    deinit {
        _ = close(epoll)
        events.deallocate()
    }

    /// Reports `token` once when `descriptor` becomes writable (a connect ended, either way).
    /// Closing the descriptor removes it.
    public func watchWritable(_ descriptor: Int32, token: UInt64) throws(SystemCallError) {
        var event = epoll_event(events: EPOLLOUT.rawValue | EPOLLONESHOT.rawValue, data: epoll_data_t(u64: token))
        try systemCall("epoll_ctl", argument: "ADD") { epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) }
    }

    /// Reports `token` once when `descriptor`, watched before, has something to read (or closed).
    public func watchReadable(_ descriptor: Int32, token: UInt64) throws(SystemCallError) {
        var event = epoll_event(events: EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLONESHOT.rawValue, data: epoll_data_t(u64: token))
        try systemCall("epoll_ctl", argument: "MOD") { epoll_ctl(epoll, EPOLL_CTL_MOD, descriptor, &event) }
    }

    /// Waits at most `milliseconds` (-1: until something happens) and hands each ready token to
    /// `ready`; a wake-up is consumed here, not reported.
    public func wait(milliseconds: Int32, _ ready: (UInt64) -> Void) throws(SystemCallError) {
        let count = try systemCall("epoll_wait") { epoll_wait(epoll, events, Int32(capacity), milliseconds) }
        for index in 0..<Int(count) {
            let token = events[index].data.u64
            if token == Self.wakeupToken {
                var value: UInt64 = 0
                _ = read(wakeup.descriptor, &value, MemoryLayout<UInt64>.size)
            } else {
                ready(token)
            }
        }
    }
}
