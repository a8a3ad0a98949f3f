import CLinuxNetlink
import CMnl
import SystemPackage
import OS

#if canImport(Glibc)
    import Glibc
#endif

/// An open, bound netlink socket (libmnl underneath). It belongs to the network namespace of the
/// thread that created it, wherever it is used later.
public final class NetlinkSocket {
    public enum Bus: Int32, Sendable {
        case route = 0  // NETLINK_ROUTE
        case sockDiag = 4  // NETLINK_SOCK_DIAG
        case netfilter = 12  // NETLINK_NETFILTER

        var layer: SystemCallError.Layer {
            switch self {
            case .route: .route
            case .sockDiag: .sockDiag
            case .netfilter: .conntrack
            }
        }
    }

    private let handle: OpaquePointer
    /// Which kernel interface its errors belong to.
    public let layer: SystemCallError.Layer
    public let portID: UInt32
    private var receiveBuffer: [UInt8]
    private var lastSequence: UInt32

    /// Dump replies are at most 32 KiB per datagram; a larger buffer means fewer recv calls.
    public static let receiveDatagramSize = 64 * 1024

    /// `groups`: the multicast groups (as a bit mask) whose announcements this socket receives.
    public init(bus: Bus, groups: UInt32 = 0) throws(SystemCallError) {
        let layer = bus.layer
        guard let handle = mnl_socket_open2(bus.rawValue, Int32(SOCK_CLOEXEC.rawValue)) else {
            throw SystemCallError(call: "mnl_socket_open2", code: Glibc.errno, layer: layer)  // a pointer, not a count: not systemCall's
        }
        guard mnl_socket_bind(handle, groups, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let code = Glibc.errno
            mnl_socket_close(handle)
            throw SystemCallError(call: "mnl_socket_bind", code: code, layer: layer)
        }
        self.handle = handle
        self.layer = layer
        self.portID = mnl_socket_get_portid(handle)
        self.receiveBuffer = [UInt8](repeating: 0, count: Self.receiveDatagramSize)
        self.lastSequence = 0
    }

    deinit {
        mnl_socket_close(handle)
    }

    public var fileDescriptor: Int32 { mnl_socket_get_fd(handle) }

    public func nextSequence() -> UInt32 {
        lastSequence &+= 1
        return lastSequence
    }

    /// Room for the acks of a whole batch. SO_RCVBUFFORCE passes rmem_max but needs CAP_NET_ADMIN;
    /// without it SO_RCVBUF gives what the sysctl allows.
    public func setReceiveBufferSize(_ bytes: Int32) throws(SystemCallError) {
        try setBufferSize(bytes, forced: SO_RCVBUFFORCE, plain: SO_RCVBUF, name: "SO_RCVBUF")
    }

    private func setBufferSize(_ bytes: Int32, forced: Int32, plain: Int32, name: String) throws(SystemCallError) {
        var value = bytes
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fileDescriptor, SOL_SOCKET, forced, &value, size) == 0 { return }
        try systemCall("setsockopt", argument: name, layer: layer) { setsockopt(fileDescriptor, SOL_SOCKET, plain, &value, size) }
    }

    /// Acks then carry only the failed request's header, not all of it: smaller acks, fewer lost.
    public func capAcknowledgements() throws(SystemCallError) {
        var on: Int32 = 1
        try systemCall("setsockopt", argument: "NETLINK_CAP_ACK", layer: layer) {
            mnl_socket_setsockopt(handle, c_reaper_netlink_cap_ack, &on, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// A receive that never completes would hang a purge forever; the kernel answers in microseconds.
    public func setReceiveTimeout(milliseconds: Int) throws(SystemCallError) {
        var value = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        try systemCall("setsockopt", argument: "SO_RCVTIMEO", layer: layer) {
            setsockopt(fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    public func send(_ bytes: [UInt8]) throws(SystemCallError) {
        try systemCall("sendto", argument: "netlink", layer: layer) {
            bytes.withUnsafeBytes { mnl_socket_sendto(handle, $0.baseAddress, $0.count) }
        }
    }

    /// Receives one datagram. ENOBUFS means the kernel dropped messages for lack of buffer space.
    public func receive() throws(SystemCallError) -> NetlinkMessages {
        let received = try systemCall("recvfrom", argument: "netlink", layer: layer) {
            receiveBuffer.withUnsafeMutableBytes { mnl_socket_recvfrom(handle, $0.baseAddress, $0.count) }
        }
        return NetlinkMessages(datagram: Array(receiveBuffer[0..<received]))
    }

    /// True when a datagram is waiting, after at most `milliseconds`.
    public func waitReadable(milliseconds: Int32) throws(SystemCallError) -> Bool {
        var request = pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0)
        return try systemCall("poll", argument: "netlink", layer: layer) { poll(&request, 1, milliseconds) } > 0
    }
}
