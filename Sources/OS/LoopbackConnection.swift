import CLinuxNetlink
import NetworkAddress

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP connection to ourselves on 127.0.0.1, for proving that SOCK_DESTROY is allowed here:
/// the only way to see EPERM is to destroy a socket that exists.
public final class LoopbackConnection {
    private let listener: Int32
    private let client: Int32
    private let server: Int32
    public let clientEndpoint: Endpoint
    public let serverEndpoint: Endpoint

    public init() throws(SystemCallError) {
        var descriptors: [Int32] = []
        var done = false
        defer { if !done { descriptors.forEach { _ = close($0) } } }
        let listener = try systemCall("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        descriptors.append(listener)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        try systemCall("bind") { Self.withSockaddr(&address) { bind(listener, $0, $1) } }
        try systemCall("listen") { listen(listener, 1) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try systemCall("getsockname") { Self.withMutableSockaddr(&address) { getsockname(listener, $0, &length) } }
        let client = try systemCall("socket") { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        descriptors.append(client)
        try systemCall("connect") { Self.withSockaddr(&address) { connect(client, $0, $1) } }
        let server = try systemCall("accept") { accept(listener, nil, nil) }
        descriptors.append(server)
        var local = sockaddr_in()
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try systemCall("getsockname") { Self.withMutableSockaddr(&local) { getsockname(client, $0, &length) } }
        done = true
        self.listener = listener
        self.client = client
        self.server = server
        self.serverEndpoint = Endpoint(address: .v4(UInt32(bigEndian: address.sin_addr.s_addr)), port: UInt16(bigEndian: address.sin_port))
        self.clientEndpoint = Endpoint(address: .v4(UInt32(bigEndian: local.sin_addr.s_addr)), port: UInt16(bigEndian: local.sin_port))
    }

    deinit {
        _ = close(server)
        _ = close(client)
        _ = close(listener)
    }

    /// The error a read on the client end reports now, nil if the connection is still healthy.
    public func clientError() -> SystemCallError? {
        var byte: UInt8 = 0
        let received = recv(client, &byte, 1, Int32(MSG_DONTWAIT))
        guard received < 0 else { return nil }
        let code = Glibc.errno
        return code == EAGAIN ? nil : SystemCallError(call: "recv", code: code)
    }

    private static func withSockaddr(_ address: inout sockaddr_in, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    private static func withMutableSockaddr(_ address: inout sockaddr_in, _ body: (UnsafeMutablePointer<sockaddr>) -> Int32) -> Int32 {
        withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
    }
}
