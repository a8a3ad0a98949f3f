import Conntrack
import NetworkAddress
@testable import Agent
import Testing

/// Which announced flows a dead backend's watch takes: the zones its pool selects, and never a flow
/// a DNAT sent to another (live) address.
@Suite struct NewFlowWatchTests {
    let backend = Endpoint(address: .v4(0x0A00_0003), port: 6443)
    let client = Endpoint(address: .v4(0x0A00_000A), port: 40000)

    func watched(_ zones: ConntrackZones) -> NewFlowWatch.Watched {
        .init(backend: backend, transports: [.tcp], zones: zones, announce: { _ in }, lost: { _ in })
    }

    @Test func anAnnouncedFlowMatchesOnlyInTheZonesSelected() {
        let inSeven = ConntrackEntry(
            family: .v4, transport: .tcp, original: .init(source: client, destination: backend),
            reply: .init(source: backend, destination: client), zone: 7)
        #expect(!NewFlowWatch.matches(inSeven, watched(.standard)))
        #expect(NewFlowWatch.matches(inSeven, watched(.only([7]))))
        #expect(NewFlowWatch.matches(inSeven, watched(.all)))
    }

    @Test func aFlowDialledToTheBackendButServedElsewhereIsNotAnnounced() {
        let servedElsewhere = ConntrackEntry(
            family: .v4, transport: .tcp, original: .init(source: client, destination: backend),
            reply: .init(source: Endpoint(address: .v4(0x0A00_0004), port: 6443), destination: client))
        #expect(!NewFlowWatch.matches(servedElsewhere, watched(.standard)))
        // A Service VIP's flow NAT'd to the backend names it as the reply source: taken.
        let viaVIP = ConntrackEntry(
            family: .v4, transport: .tcp, original: .init(source: client, destination: Endpoint(address: .v4(0x0A60_0001), port: 443)),
            reply: .init(source: backend, destination: client))
        #expect(NewFlowWatch.matches(viaVIP, watched(.standard)))
        // Another transport is not the pool's.
        var udp = viaVIP
        udp.transport = .udp
        #expect(!NewFlowWatch.matches(udp, watched(.standard)))
    }
}
