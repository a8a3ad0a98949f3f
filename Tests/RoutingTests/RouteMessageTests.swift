import Netlink
import NetworkAddress
import Testing

@testable import Routing

/// rtnetlink bytes as the kernel writes them (from `ip monitor` captures of a veth losing its
/// peer and an ARP entry failing), and the route query as `ip route get` sends it.
@Suite struct RouteMessageTests {
    static func message(type: UInt16, payload: [UInt8]) -> NetlinkMessage {
        var writer = NetlinkMessageWriter(type: type, flags: 0, sequence: 0)
        writer.append(payload)
        return NetlinkMessages(datagram: writer.finish()).first { _ in true }!
    }

    @Test func aFailedNeighbourEntryNamesItsAddressAndInterface() throws {
        // ndmsg: AF_INET, pads, ifindex 7, state NUD_FAILED (0x20), flags 0, type 1; NDA_DST 10.233.2.2.
        let payload: [UInt8] = [2, 0, 0, 0, 7, 0, 0, 0, 0x20, 0, 0, 1, 8, 0, 1, 0, 10, 233, 2, 2]
        let event = try #require(RouteEvent.parse(Self.message(type: 28, payload: payload)))
        guard case .neighbour(let address, let interface, let state) = event else { Issue.record("\(event)"); return }
        #expect(address == .v4(0x0AE9_0202) && interface == 7 && state.isFailed)
        #expect(!NeighbourState.reachable.isFailed)
    }

    @Test func aLinkWithoutLowerUpHasNoCarrier() throws {
        // ifinfomsg: AF_UNSPEC, pad, ARPHRD_ETHER, index 7, flags IFF_UP|IFF_BROADCAST (no LOWER_UP), change; IFLA_IFNAME "to-up2".
        var payload: [UInt8] = [0, 0, 1, 0, 7, 0, 0, 0, 0x03, 0x10, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        payload += [11, 0, 3, 0] + Array("to-up2".utf8) + [0, 0]
        #expect(RouteEvent.parse(Self.message(type: 16, payload: payload)) == .link(interface: 7, name: "to-up2", carrier: false))
        payload[10] = 0x01  // IFF_LOWER_UP (0x10000)
        #expect(RouteEvent.parse(Self.message(type: 16, payload: payload)) == .link(interface: 7, name: "to-up2", carrier: true))
    }

    @Test func truncatedOrUnknownMessagesAreNothing() {
        #expect(RouteEvent.parse(Self.message(type: 28, payload: [2, 0, 0])) == nil)
        #expect(RouteEvent.parse(Self.message(type: 16, payload: [0, 0, 1, 0])) == nil)
        #expect(RouteEvent.parse(Self.message(type: 24, payload: [])) == nil)
        // A neighbour entry whose address length does not fit its family.
        #expect(RouteEvent.parse(Self.message(type: 28, payload: [10, 0, 0, 0, 7, 0, 0, 0, 0x20, 0, 0, 1, 8, 0, 1, 0, 1, 2, 3, 4])) == nil)
    }

    @Test func theQueryIsWhatIpRouteGetSends() {
        let bytes = RouteQuery(destination: .v4(0x0AE9_0202)).serialized(sequence: 5, portID: 0)
        #expect(bytes.count == 16 + 12 + 8)
        #expect(Array(bytes[4..<6]) == [26, 0] && Array(bytes[6..<8]) == [1, 0])  // RTM_GETROUTE, NLM_F_REQUEST
        #expect(Array(bytes[16..<28]) == [2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])  // AF_INET, /32
        #expect(Array(bytes[28..<36]) == [8, 0, 1, 0, 10, 233, 2, 2])  // RTA_DST
    }

    @Test func theAnswerNamesTheInterfaceAndGateway() {
        // rtmsg AF_INET; RTA_OIF 7; RTA_GATEWAY 10.0.0.1.
        let payload: [UInt8] = [2, 32, 0, 0, 254, 0, 0, 1, 0, 2, 0, 0] + [8, 0, 4, 0, 7, 0, 0, 0] + [8, 0, 5, 0, 10, 0, 0, 1]
        #expect(Route.parse(Self.message(type: 24, payload: payload)) == Route(interface: 7, gateway: .v4(0x0A00_0001)))
        let multipath: [UInt8] = [2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0] + [4, 0, 9, 0]
        #expect(Route.parse(Self.message(type: 24, payload: multipath)) == Route(interface: nil, gateway: nil))
    }
}
