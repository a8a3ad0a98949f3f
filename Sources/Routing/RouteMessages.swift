import Netlink
import NetworkAddress

/// rtnetlink's link and neighbour announcements, parsed: what early detection listens to.
public enum RouteEvent: Sendable, Equatable {
    /// A neighbour (ARP/NDP) entry changed: `state` is the NUD_* bit set.
    case neighbour(address: IPAddress, interface: Int32, state: NeighbourState)
    /// A link changed: `carrier` is IFF_LOWER_UP (the cable, or a veth peer, is there).
    case link(interface: Int32, name: String?, carrier: Bool)

    /// RTM_NEWLINK, RTM_NEWNEIGH (from linux/rtnetlink.h).
    static let newLink: UInt16 = 16
    static let newNeighbour: UInt16 = 28

    /// One announcement; nil for what early detection does not read.
    public static func parse(_ message: NetlinkMessage) -> RouteEvent? {
        let payload = message.payload
        let reader = ByteReader(payload)
        switch message.type {
        case newNeighbour:
            // struct ndmsg: family u8, pad u8, pad u16, ifindex s32, state u16, flags u8, type u8.
            guard let family = reader.hostOrder(UInt8.self, at: 0), let interface = reader.hostOrder(Int32.self, at: 4),
                let state = reader.hostOrder(UInt16.self, at: 8), payload.count >= 12
            else { return nil }
            let attributes = NetlinkAttributes(payload.dropFirst(12))
            guard let destination = attributes[1], let address = IPAddress(family: family, bytes: destination.value) else { return nil }
            return .neighbour(address: address, interface: interface, state: NeighbourState(rawValue: state))
        case newLink:
            // struct ifinfomsg: family u8, pad u8, type u16, index s32, flags u32, change u32.
            guard let interface = reader.hostOrder(Int32.self, at: 4), let flags = reader.hostOrder(UInt32.self, at: 8),
                payload.count >= 16
            else { return nil }
            let attributes = NetlinkAttributes(payload.dropFirst(16))
            let name = attributes[3].map { String(decoding: $0.value.prefix { $0 != 0 }, as: UTF8.self) }  // IFLA_IFNAME
            return .link(interface: interface, name: name, carrier: flags & lowerUp != 0)
        default:
            return nil
        }
    }

    /// IFF_LOWER_UP (linux/if.h).
    static let lowerUp: UInt32 = 0x10000
}

/// The NUD_* states of a neighbour entry (linux/neighbour.h).
public struct NeighbourState: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let incomplete = NeighbourState(rawValue: 0x01)
    public static let reachable = NeighbourState(rawValue: 0x02)
    public static let stale = NeighbourState(rawValue: 0x04)
    public static let delay = NeighbourState(rawValue: 0x08)
    public static let probe = NeighbourState(rawValue: 0x10)
    public static let failed = NeighbourState(rawValue: 0x20)

    /// Resolution gave up: nothing at that address answers ARP/NDP any more.
    public var isFailed: Bool { contains(.failed) }
}

extension IPAddress {
    /// An address from an AF_INET (2) or AF_INET6 (10) attribute's bytes.
    init?(family: UInt8, bytes: ArraySlice<UInt8>) {
        guard (family == 2 && bytes.count == 4) || (family == 10 && bytes.count == 16) else { return nil }
        self.init(networkBytes: bytes)
    }

    var family: UInt8 {
        if case .v4 = self { 2 } else { 10 }
    }
}
