import Conntrack
import NetworkAddress
import Reaper
import SockDiag
import Testing

/// What a destination takes: never a socket without a peer.
@Suite struct DestinationMatcherTests {
    func udp(state: SocketState, remote: Endpoint) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: .udp, state: state,
            id: SocketID(source: Endpoint(address: .v4(0), port: 53), destination: remote, cookie: 7))
    }

    /// A DNS server's socket is unconnected: state close, remote 0.0.0.0:0. `--state close` with a
    /// destination that covers the any-address must not take it.
    @Test func anUnconnectedSocketIsTowardNothing() throws {
        let everything = DestinationMatcher(
            destinations: [try Destination(parsing: "0.0.0.0/0")], transports: [.udp], states: SocketStates([.established, .close]))
        #expect(!everything.matches(udp(state: .close, remote: Endpoint(address: .v4(0), port: 0))))
        // The other way: a connected UDP socket toward a backend is taken.
        #expect(everything.matches(udp(state: .established, remote: Endpoint(address: .v4(0x0A00_0003), port: 53))))
    }

    /// Zone 7's 10.0.0.3 may be another network's: matched only when its zone is selected, for a
    /// purge's dump and for the agent's new-flow announcements alike.
    @Test func anEntryMatchesOnlyInTheZonesSelected() throws {
        let backend = Endpoint(address: .v4(0x0A00_0003), port: 6443), client = Endpoint(address: .v4(0x0A00_000A), port: 40000)
        let inSeven = ConntrackEntry(
            family: .v4, transport: .tcp, original: .init(source: client, destination: backend),
            reply: .init(source: backend, destination: client), zone: 7)
        let destination = [try Destination(parsing: "10.0.0.3:6443")]
        #expect(DestinationMatcher(destinations: destination, transports: [.tcp]).match(inSeven) == nil)
        #expect(DestinationMatcher(destinations: destination, transports: [.tcp]).matchInAnyZone(inSeven) == .originalDestination)
        #expect(DestinationMatcher(destinations: destination, transports: [.tcp], zones: .only([7])).match(inSeven) == .originalDestination)
        #expect(DestinationMatcher(destinations: destination, transports: [.tcp], zones: .all).match(inSeven) == .originalDestination)
        // Dialled to the backend, answered by another address: a DNAT's to a live one.
        var servedElsewhere = inSeven
        servedElsewhere.zone = 0
        servedElsewhere.reply.source = Endpoint(address: .v4(0x0A00_0004), port: 6443)
        #expect(DestinationMatcher(destinations: destination, transports: [.tcp]).isServedElsewhere(servedElsewhere))
    }
}
