import NetworkAddress
import SockDiag
import Conntrack

/// Flows a NAT sent to one of the destinations under another name (a Service VIP DNAT'd to a
/// backend): the local socket names only the VIP, and conntrack's entry is the one place that ties
/// the two together. Its original tuple is the socket's 4-tuple, so those sockets can be named exactly.
public struct TranslatedFlows: Sendable {
    /// The (source, destination) pairs of the entries' original tuples, per transport.
    let flows: [TransportProtocol: Set<Flow>]
    /// Where those flows were sent (the VIPs): what the socket dump asks the kernel for.
    public let destinations: [Destination]
    public let transports: Set<TransportProtocol>

    /// From the entries `matcher` matched by reply source only: their original destination is not
    /// itself one of the destinations (else the direct socket match already covered them).
    public init(_ entries: [ConntrackEntry], matcher: DestinationMatcher) {
        var flows: [TransportProtocol: Set<Flow>] = [:]
        var destinations: [Destination] = []
        var seen = Set<Destination>()
        for entry in entries where matcher.match(entry) == .replySource {
            flows[entry.transport, default: []].insert(Flow(entry))
            let vip = Destination(address: entry.original.destination.address, port: entry.original.destination.port)
            if seen.insert(vip).inserted { destinations.append(vip) }
        }
        self.flows = flows
        self.destinations = destinations
        self.transports = Set(flows.keys)
    }

    public var isEmpty: Bool { flows.isEmpty }

    /// The socket dump that can hold those flows' sockets; callers re-check with `matches`.
    public func socketQuery(states: SocketStates) -> SocketQuery {
        SocketQuery(destinations: destinations, transports: transports, states: states)
    }

    /// The socket is exactly one of the flows: its (local, remote) is an entry's original (source,
    /// destination), on the same transport. Another socket to the same VIP (DNAT'd to a live
    /// backend) has another source port and is never hit.
    public func matches(_ socket: DiagnosedSocket) -> Bool {
        flows[socket.transport]?.contains(Flow(socket)) ?? false
    }
}
