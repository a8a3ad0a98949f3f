import CLinuxNetlink
import NetworkAddress

#if canImport(Glibc)
    import Glibc
#endif

/// The kernel's keepalive settings for one heartbeat connection: the kernel itself probes the peer
/// after `idleSeconds` of silence and every `intervalSeconds` after, and fails the socket with
/// ETIMEDOUT once `userTimeoutMilliseconds` pass with a probe out and nothing acknowledged. Linux
/// counts keepalive in whole seconds, 1 at least (0 is EINVAL); only the user timeout is in ms.
/// With a user timeout set, the kernel ends the connection on it, not on `count`.
public struct HeartbeatOptions: Sendable, Equatable {
    public var idleSeconds: Int32
    public var intervalSeconds: Int32
    public var count: Int32
    public var userTimeoutMilliseconds: Int32

    public init(idleSeconds: Int32 = 1, intervalSeconds: Int32 = 1, count: Int32 = 1, userTimeoutMilliseconds: Int32 = 1000) {
        self.idleSeconds = idleSeconds
        self.intervalSeconds = intervalSeconds
        self.count = count
        self.userTimeoutMilliseconds = userTimeoutMilliseconds
    }
}

/// A TCP connection of the agent's own that carries nothing: kernel keepalive probes, no data, no
/// user-space wake-up per probe. It only ends in an error (the peer stopped acknowledging, refused,
/// reset) or the peer's FIN.
public enum HeartbeatSocket {
    /// What a read on an established heartbeat found.
    public enum ReadOutcome: Sendable, Equatable {
        /// Bytes the peer sent (a server's banner or 408), read and dropped: the heartbeat goes on.
        case data
        /// Nothing to read after all.
        case nothing
        /// The peer's FIN.
        case closed
        case failed(SystemCallError)
    }

    /// Starts a connect toward `endpoint` with the keepalive options set, and returns the
    /// descriptor: watch it for writability, then ask `pendingError`. A connect the kernel ends at
    /// once throws, the descriptor already closed.
    public static func connect(to endpoint: Endpoint, options: HeartbeatOptions) throws(SystemCallError) -> Int32 {
        let family = endpoint.address.family == .v4 ? AF_INET : AF_INET6
        let descriptor = try systemCall("socket") {
            socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do throws(SystemCallError) {
            try setOption(descriptor, SOL_SOCKET, SO_KEEPALIVE, 1, name: "SO_KEEPALIVE")
            try setOption(descriptor, Int32(IPPROTO_TCP), TCP_KEEPIDLE, options.idleSeconds, name: "TCP_KEEPIDLE")
            try setOption(descriptor, Int32(IPPROTO_TCP), TCP_KEEPINTVL, options.intervalSeconds, name: "TCP_KEEPINTVL")
            try setOption(descriptor, Int32(IPPROTO_TCP), TCP_KEEPCNT, options.count, name: "TCP_KEEPCNT")
            try setOption(descriptor, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, options.userTimeoutMilliseconds, name: "TCP_USER_TIMEOUT")
            let started = ProbeSocket.withSocketAddress(of: endpoint) { address, length in Glibc.connect(descriptor, address, length) }
            if started < 0 {
                let code = Glibc.errno
                if code != EINPROGRESS && code != EINTR { throw SystemCallError(call: "connect", code: code) }
            }
            return descriptor
        } catch {
            _ = Glibc.close(descriptor)
            throw error
        }
    }

    /// The socket's pending error (SO_ERROR, which reading clears): nil when there is none. After a
    /// connect it is how the connect ended; later, why the connection failed.
    public static func pendingError(_ descriptor: Int32) -> SystemCallError? {
        do {
            let code = try option(descriptor, SOL_SOCKET, SO_ERROR, name: "SO_ERROR")
            return code == 0 ? nil : SystemCallError(call: "connect", code: code)
        } catch {
            return error
        }
    }

    /// Reads what the peer sent, once readable, and drops it.
    public static func drain(_ descriptor: Int32) -> ReadOutcome {
        var buffer = [UInt8](repeating: 0, count: 512)
        do {
            let received = try systemCall("recv") {
                buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            }
            return received == 0 ? .closed : .data
        } catch {
            return error.errno.rawValue == EAGAIN ? .nothing : .failed(error)
        }
    }

    /// The options as the kernel holds them now.
    public static func options(of descriptor: Int32) throws(SystemCallError) -> (keepalive: Bool, HeartbeatOptions) {
        let keepalive = try option(descriptor, SOL_SOCKET, SO_KEEPALIVE, name: "SO_KEEPALIVE")
        let options = HeartbeatOptions(
            idleSeconds: try option(descriptor, Int32(IPPROTO_TCP), TCP_KEEPIDLE, name: "TCP_KEEPIDLE"),
            intervalSeconds: try option(descriptor, Int32(IPPROTO_TCP), TCP_KEEPINTVL, name: "TCP_KEEPINTVL"),
            count: try option(descriptor, Int32(IPPROTO_TCP), TCP_KEEPCNT, name: "TCP_KEEPCNT"),
            userTimeoutMilliseconds: try option(descriptor, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, name: "TCP_USER_TIMEOUT"))
        return (keepalive != 0, options)
    }

    /// Closes the heartbeat: a FIN if it was connected (the peer sees an ordinary close).
    public static func close(_ descriptor: Int32) {
        _ = Glibc.close(descriptor)
    }

    private static func setOption(_ descriptor: Int32, _ level: Int32, _ option: Int32, _ value: Int32, name: String)
        throws(SystemCallError)
    {
        var value = value
        try systemCall("setsockopt", argument: name) { setsockopt(descriptor, level, option, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    private static func option(_ descriptor: Int32, _ level: Int32, _ option: Int32, name: String) throws(SystemCallError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        try systemCall("getsockopt", argument: name) { getsockopt(descriptor, level, option, &value, &length) }
        return value
    }
}
