import CLinuxNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// Tells systemd (or anything listening on `$NOTIFY_SOCKET`) how the service is doing: the
/// sd_notify protocol, one datagram per state change (`READY=1`, `RELOADING=1`, `STOPPING=1`,
/// `WATCHDOG=1`, ...). Written here rather than linking libsystemd: the protocol is one sendto.
public final class ServiceManagerNotifier: Sendable {
    /// Where the datagrams go: a path, or an abstract socket name written with a leading "@".
    public let socketPath: String
    private let descriptor: Int32

    /// The notifier `$NOTIFY_SOCKET` names, or nil when the service manager asked for none.
    public static func fromEnvironment() throws(SystemCallError) -> ServiceManagerNotifier? {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return nil }
        return try ServiceManagerNotifier(socketPath: path)
    }

    /// How often systemd wants `WATCHDOG=1` (`$WATCHDOG_USEC`, for this process by `$WATCHDOG_PID`),
    /// or nil when no watchdog is set.
    public static func watchdogInterval() -> Duration? {
        guard let text = getenv("WATCHDOG_USEC").map({ String(cString: $0) }), let microseconds = Int64(text), microseconds > 0
        else { return nil }
        if let pid = getenv("WATCHDOG_PID").map({ String(cString: $0) }), pid != String(getpid()) { return nil }
        return .microseconds(microseconds)
    }

    public init(socketPath: String) throws(SystemCallError) {
        guard socketPath.hasPrefix("/") || socketPath.hasPrefix("@"), socketPath.utf8.count < 108 else {
            throw SystemCallError(call: "NOTIFY_SOCKET \(socketPath)", code: EINVAL)
        }
        self.socketPath = socketPath
        descriptor = try systemCall("socket", argument: "AF_UNIX") {
            socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
    }

    deinit {
        close(descriptor)
    }

    /// Sends one state datagram, e.g. ["READY=1", "STATUS=watching 3 backends"].
    public func notify(_ assignments: [String]) throws(SystemCallError) {
        let message = Array(assignments.joined(separator: "\n").utf8)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(socketPath.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }  // abstract namespace: a leading NUL
        let length = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + path.count)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let descriptor = self.descriptor
        try systemCall("sendto", argument: socketPath) {
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    message.withUnsafeBytes { sendto(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length) }
                }
            }
        }
    }

    /// CLOCK_MONOTONIC now, in microseconds: what `RELOADING=1` carries as MONOTONIC_USEC.
    public static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }
}
