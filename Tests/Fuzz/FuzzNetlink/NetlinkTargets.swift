import FuzzHarness
import Conntrack
import Netlink
import NetworkAddress
import Routing
import SockDiag

/// The kernel reply parsers, each fed bytes as a received datagram would carry them. A target
/// that wraps the input in a netlink header does so to spend the fuzzer's effort on the payload.
enum NetlinkTargets {
    static let all: [String: FuzzTarget] = [
        "datagram": datagram,
        "sockdiag": sockDiag,
        "conntrack": conntrack,
        "route": route,
    ]

    /// A whole datagram: every message through every parser, whatever its type says.
    static func datagram(_ bytes: [UInt8]) {
        for message in NetlinkMessages(datagram: bytes) {
            _ = message.errorCode
            _ = message.isDumpInterrupted
            walk(NetlinkAttributes(message.payload), depth: 0)
            _ = DiagnosedSocket(message: message, transport: .tcp)
            _ = ConntrackCodec.entry(from: message)
            _ = Route.parse(message)
            _ = RouteEvent.parse(message)
        }
    }

    /// `struct inet_diag_msg` and its attributes (INET_DIAG_INFO: tcp_info of any length).
    static func sockDiag(_ payload: [UInt8]) {
        let message = wrapped(payload, type: 20)  // SOCK_DIAG_BY_FAMILY
        _ = DiagnosedSocket(message: message, transport: .tcp)
        _ = DiagnosedSocket(message: message, transport: .udp)
        _ = TCPInfo(ByteReader(payload[...]))
    }

    /// `struct nfgenmsg` and ctnetlink attributes, parsed by libnetfilter_conntrack.
    static func conntrack(_ payload: [UInt8]) {
        _ = ConntrackCodec.entry(from: wrapped(payload, type: 0x100))  // IPCTNL_MSG_CT_NEW
    }

    /// The first byte picks RTM_NEWLINK, RTM_NEWROUTE or RTM_NEWNEIGH; the rest is the payload.
    static func route(_ bytes: [UInt8]) {
        guard let selector = bytes.first else { return }
        let types: [UInt16] = [16, 24, 28]
        let message = wrapped(Array(bytes.dropFirst()), type: types[Int(selector) % types.count])
        _ = Route.parse(message)
        _ = RouteEvent.parse(message)
    }

    static func wrapped(_ payload: [UInt8], type: UInt16) -> NetlinkMessage {
        var datagram = [UInt8]()
        let length = UInt32(truncatingIfNeeded: NetlinkMessage.headerSize + payload.count)
        for value in [length] { datagram += withUnsafeBytes(of: value.littleEndian, Array.init) }
        datagram += withUnsafeBytes(of: type.littleEndian, Array.init)
        datagram += [0x02, 0x00]  // NLM_F_MULTI
        datagram += [UInt8](repeating: 0, count: 8)  // sequence, port id
        datagram += payload
        return NetlinkMessages(datagram: datagram).first { _ in true }!
    }

    static func walk(_ attributes: NetlinkAttributes, depth: Int) {
        guard depth < 8 else { return }
        for attribute in attributes {
            _ = attribute.reader.hostOrder(UInt32.self, at: 0)
            _ = attribute.reader.networkOrder(UInt16.self, at: 2)
            walk(attribute.nested, depth: depth + 1)
        }
    }
}
