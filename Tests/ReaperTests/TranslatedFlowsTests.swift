import NetworkAddress
import Reaper
import SockDiag
import Testing
import Conntrack

/// Which local sockets a NAT'd conntrack entry names: exactly its original tuple, nothing else.
@Suite struct TranslatedFlowsTests {
    static func v4(_ last: UInt32, _ port: UInt16) -> Endpoint { Endpoint(address: .v4(0x0AEC_0000 | last), port: port) }
    static let client = v4(1, 40000), vip = v4(100, 443), backend1 = v4(2, 8443), backend2 = v4(3, 8443)

    let matcher = DestinationMatcher(
        destinations: [Destination(address: backend1.address, port: backend1.port)],
        transports: [.tcp, .udp])

    func entry(_ source: Endpoint, _ destination: Endpoint, repliedBy replier: Endpoint, _ transport: TransportProtocol = .tcp)
        -> ConntrackEntry
    {
        ConntrackEntry(
            family: .v4, transport: transport,
            original: .init(source: source, destination: destination),
            reply: .init(source: replier, destination: source))
    }

    func socket(_ local: Endpoint, _ remote: Endpoint, _ transport: TransportProtocol = .tcp, family: SocketFamily = .inet)
        -> DiagnosedSocket
    {
        DiagnosedSocket(
            family: family, transport: transport, state: .established, id: SocketID(source: local, destination: remote, cookie: 7))
    }

    static func mapped(_ endpoint: Endpoint) -> Endpoint {
        guard case .v4(let value) = endpoint.address else { return endpoint }
        return Endpoint(address: .v4Mapped(value), port: endpoint.port)
    }

    @Test func theNATedSocketIsNamedByItsTuple() {
        let flows = TranslatedFlows([entry(Self.client, Self.vip, repliedBy: Self.backend1)], matcher: matcher)
        #expect(flows.destinations == [Destination(address: Self.vip.address, port: 443)])
        #expect(flows.transports == [.tcp])
        #expect(flows.matches(socket(Self.client, Self.vip)))
    }

    @Test func anotherFlowToTheSameVIPIsSpared() {
        // The same VIP NAT'd to the live backend: another source port, another entry.
        let flows = TranslatedFlows(
            [
                entry(Self.client, Self.vip, repliedBy: Self.backend1),
                entry(Self.v4(1, 40001), Self.vip, repliedBy: Self.backend2),
            ], matcher: matcher)
        #expect(!flows.matches(socket(Self.v4(1, 40001), Self.vip)))
        #expect(!flows.matches(socket(Self.client, Self.v4(100, 444))))
    }

    @Test func transportMustAgree() {
        let flows = TranslatedFlows([entry(Self.client, Self.vip, repliedBy: Self.backend1, .udp)], matcher: matcher)
        #expect(flows.transports == [.udp])
        #expect(flows.matches(socket(Self.client, Self.vip, .udp)))
        #expect(!flows.matches(socket(Self.client, Self.vip, .tcp)))
    }

    @Test func directEntriesAreLeftToTheDirectMatch() {
        // Original destination is the backend itself: matched by original destination, not a NAT'd flow.
        let flows = TranslatedFlows([entry(Self.client, Self.backend1, repliedBy: Self.backend1)], matcher: matcher)
        #expect(flows.isEmpty)
        #expect(flows.destinations.isEmpty)
    }

    @Test func dualStackSocketMatchesItsIPv4Entry() {
        let flows = TranslatedFlows([entry(Self.client, Self.vip, repliedBy: Self.backend1)], matcher: matcher)
        #expect(flows.matches(socket(Self.mapped(Self.client), Self.mapped(Self.vip), family: .inet6)))
    }

    @Test func transportsOutsideTheMatcherAreIgnored() {
        let tcpOnly = DestinationMatcher(destinations: [Destination(address: Self.backend1.address, port: 8443)], transports: [.tcp])
        let flows = TranslatedFlows([entry(Self.client, Self.vip, repliedBy: Self.backend1, .udp)], matcher: tcpOnly)
        #expect(flows.isEmpty)
    }
}
