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
}
