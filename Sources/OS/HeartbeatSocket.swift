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
    /// descriptor: watch it for writability, then ask `TCPSocket.pendingError`. A connect the kernel
    /// ends at once throws, the descriptor already closed.
    public static func connect(to endpoint: Endpoint, options: HeartbeatOptions) throws(SystemCallError) -> Int32 {
        try TCPSocket.connect(to: endpoint) { descriptor throws(SystemCallError) in
            let tcp = Int32(IPPROTO_TCP)
            try TCPSocket.setOption(descriptor, SOL_SOCKET, SO_KEEPALIVE, Int32(1), name: "SO_KEEPALIVE")
            try TCPSocket.setOption(descriptor, tcp, TCP_KEEPIDLE, options.idleSeconds, name: "TCP_KEEPIDLE")
            try TCPSocket.setOption(descriptor, tcp, TCP_KEEPINTVL, options.intervalSeconds, name: "TCP_KEEPINTVL")
            try TCPSocket.setOption(descriptor, tcp, TCP_KEEPCNT, options.count, name: "TCP_KEEPCNT")
            try TCPSocket.setOption(descriptor, tcp, TCP_USER_TIMEOUT, options.userTimeoutMilliseconds, name: "TCP_USER_TIMEOUT")
        }
    }

    /// Reads what the peer sent, once readable, and drops it.
    public static func drain(_ descriptor: Int32) -> ReadOutcome {
        var buffer = [UInt8](repeating: 0, count: 512)
        do {
            return try TCPSocket.receive(descriptor, into: &buffer) == 0 ? .closed : .data
        } catch {
            return error.errno == .resourceTemporarilyUnavailable ? .nothing : .failed(error)
        }
    }

    /// The options as the kernel holds them now.
    public static func options(of descriptor: Int32) throws(SystemCallError) -> (keepalive: Bool, HeartbeatOptions) {
        let tcp = Int32(IPPROTO_TCP)
        let keepalive = try TCPSocket.option(descriptor, SOL_SOCKET, SO_KEEPALIVE, name: "SO_KEEPALIVE")
        let options = HeartbeatOptions(
            idleSeconds: try TCPSocket.option(descriptor, tcp, TCP_KEEPIDLE, name: "TCP_KEEPIDLE"),
            intervalSeconds: try TCPSocket.option(descriptor, tcp, TCP_KEEPINTVL, name: "TCP_KEEPINTVL"),
            count: try TCPSocket.option(descriptor, tcp, TCP_KEEPCNT, name: "TCP_KEEPCNT"),
            userTimeoutMilliseconds: try TCPSocket.option(descriptor, tcp, TCP_USER_TIMEOUT, name: "TCP_USER_TIMEOUT"))
        return (keepalive != 0, options)
    }

    /// Closes the heartbeat: a FIN if it was connected (the peer sees an ordinary close).
    public static func close(_ descriptor: Int32) {
        TCPSocket.close(descriptor)
    }
}
