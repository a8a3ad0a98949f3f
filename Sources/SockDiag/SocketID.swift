import Netlink
import NetworkAddress

/// `struct inet_diag_sockid`: the 4-tuple, interface and cookie that name one kernel socket.
/// A destroy echoes it unchanged; the cookie keeps a new socket on the same tuple safe.
public struct SocketID: Hashable, Sendable {
    public var source: Endpoint
    public var destination: Endpoint
    public var interface: UInt32
    public var cookie: UInt64

    public static let encodedSize = 48
    public static let noCookie = UInt64.max  // INET_DIAG_NOCOOKIE: ~0 in both halves

    public init(source: Endpoint, destination: Endpoint, interface: UInt32 = 0, cookie: UInt64 = Self.noCookie) {
        self.source = source
        self.destination = destination
        self.interface = interface
        self.cookie = cookie
    }

    func write(into writer: inout NetlinkMessageWriter) {
        writer.append(networkOrder: source.port)
        writer.append(networkOrder: destination.port)
        writer.append(address: source.address, width: 16)
        writer.append(address: destination.address, width: 16)
        writer.append(hostOrder: interface)
        writer.append(hostOrder: UInt32(truncatingIfNeeded: cookie))
        writer.append(hostOrder: UInt32(truncatingIfNeeded: cookie >> 32))
    }

    /// Reads the id of a socket of `family` (AF_INET or AF_INET6) from 48 bytes.
    init?(reading reader: ByteReader, at offset: Int, family: UInt8) {
        let addressLength = family == 2 ? 4 : 16
        guard let sourcePort = reader.networkOrder(UInt16.self, at: offset),
            let destinationPort = reader.networkOrder(UInt16.self, at: offset + 2),
            let sourceBytes = reader.slice(at: offset + 4, count: addressLength),
            let destinationBytes = reader.slice(at: offset + 20, count: addressLength),
            let sourceAddress = IPAddress(networkBytes: sourceBytes),
            let destinationAddress = IPAddress(networkBytes: destinationBytes),
            let interface = reader.hostOrder(UInt32.self, at: offset + 36),
            let cookieLow = reader.hostOrder(UInt32.self, at: offset + 40),
            let cookieHigh = reader.hostOrder(UInt32.self, at: offset + 44)
        else { return nil }
        self.init(
            source: Endpoint(address: sourceAddress, port: sourcePort),
            destination: Endpoint(address: destinationAddress, port: destinationPort),
            interface: interface,
            cookie: UInt64(cookieHigh) << 32 | UInt64(cookieLow))
    }
}
