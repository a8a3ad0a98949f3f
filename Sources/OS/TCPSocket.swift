import CLinuxNetlink
import NetworkAddress

#if canImport(Glibc)
    import Glibc
#endif

/// The calls every TCP socket of the agent's own makes (probes, heartbeats), each wrapped here once:
/// a non-blocking connect with its options set before the SYN, socket options, the pending error,
/// a read that never waits.
public enum TCPSocket {
    /// Starts a connect toward `endpoint` once `configure` has set the socket's options, and returns
    /// the descriptor, connecting or connected: watch it for writability, then ask `pendingError`. A
    /// connect the kernel ends at once (ECONNREFUSED over loopback, ENETUNREACH) or an option it
    /// refuses throws, the descriptor already closed.
    public static func connect(to endpoint: Endpoint, configure: (Int32) throws(SystemCallError) -> Void)
        throws(SystemCallError) -> Int32
    {
        let family = endpoint.address.family == .v4 ? AF_INET : AF_INET6
        let descriptor = try systemCall("socket") {
            socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do throws(SystemCallError) {
            try configure(descriptor)
            let started = withSocketAddress(of: endpoint) { address, length in Glibc.connect(descriptor, address, length) }
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

    /// The socket's pending error (SO_ERROR, which reading clears): nil when there is none. Once a
    /// connect's descriptor is writable, how the connect ended; later, why the connection failed.
    public static func pendingError(_ descriptor: Int32) -> SystemCallError? {
        do {
            let code: Int32 = try option(descriptor, SOL_SOCKET, SO_ERROR, name: "SO_ERROR")
            return code == 0 ? nil : SystemCallError(call: "connect", code: code)
        } catch {
            return error
        }
    }

    public static func setOption<Value: BitwiseCopyable>(
        _ descriptor: Int32, _ level: Int32, _ option: Int32, _ value: Value, name: String
    ) throws(SystemCallError) {
        try systemCall("setsockopt", argument: name) {
            withUnsafeBytes(of: value) { setsockopt(descriptor, level, option, $0.baseAddress, socklen_t($0.count)) }
        }
    }

    public static func option(_ descriptor: Int32, _ level: Int32, _ option: Int32, name: String) throws(SystemCallError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        try systemCall("getsockopt", argument: name) { getsockopt(descriptor, level, option, &value, &length) }
        return value
    }

    /// Writes what fits without waiting; returns how much was written.
    public static func send(_ descriptor: Int32, _ bytes: [UInt8]) throws(SystemCallError) -> Int {
        try systemCall("send") {
            bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        }
    }

    /// Reads what has arrived into `buffer` without waiting; 0 means the peer closed, EAGAIN that
    /// nothing had.
    public static func receive(_ descriptor: Int32, into buffer: inout [UInt8]) throws(SystemCallError) -> Int {
        try systemCall("recv") { buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } }
    }

    public static func close(_ descriptor: Int32) {
        _ = Glibc.close(descriptor)
    }

    static func withSocketAddress(of endpoint: Endpoint, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        switch endpoint.address {
        case .v4(let address):
            var socketAddress = sockaddr_in()
            socketAddress.sin_family = sa_family_t(AF_INET)
            socketAddress.sin_port = endpoint.port.bigEndian
            socketAddress.sin_addr.s_addr = address.bigEndian
            return withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6:
            var socketAddress = sockaddr_in6()
            socketAddress.sin6_family = sa_family_t(AF_INET6)
            socketAddress.sin6_port = endpoint.port.bigEndian
            withUnsafeMutableBytes(of: &socketAddress.sin6_addr) { raw in
                for (index, byte) in endpoint.address.networkBytes.enumerated() { raw[index] = byte }
            }
            return withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }
}
