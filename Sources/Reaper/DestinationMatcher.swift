import NetworkAddress
import SockDiag
import Conntrack

/// Decides which sockets and conntrack entries belong to a set of destinations. The kernel's
/// filters only narrow the dumps; this is the rule that counts, applied to every candidate.
public struct DestinationMatcher: Sendable {
    public let destinations: [Destination]
    public let transports: Set<TransportProtocol>
    public let states: SocketStates
    /// When set, only stuck connections among the destinations' match (and their conntrack entries).
    public let stuck: StuckRule?
    /// The conntrack zones whose entries match; sockets have no zone.
    public let zones: ConntrackZones

    public init(
        destinations: [Destination], transports: Set<TransportProtocol>, states: SocketStates = .reapByDefault,
        stuck: StuckRule? = nil, zones: ConntrackZones = .standard
    ) {
        self.destinations = destinations
        self.transports = transports
        self.states = states
        self.stuck = stuck
        self.zones = zones
    }

    /// Toward one of the destinations, by transport, state and address: before any stuck test.
    /// A socket without a peer (an unconnected UDP socket: a DNS server's, whatever `--state close`
    /// asks) is toward nothing: its remote is the any-address, port 0.
    public func isTowardDestinations(_ socket: DiagnosedSocket) -> Bool {
        socket.remote.port != 0 && transports.contains(socket.transport) && states.contains(socket.state)
            && destinations.contains { $0.matches(address: socket.remote.address, port: socket.remote.port) }
    }

    public func matches(_ socket: DiagnosedSocket) -> Bool {
        isTowardDestinations(socket) && (stuck?.condemns(socket) ?? true)
    }

    /// How an entry matched: by where the client sent it, or by who answered (a NAT'd backend).
    public enum ConntrackMatch: String, Sendable, Codable {
        case originalDestination = "original-destination"
        case replySource = "reply-source"
    }

    public func match(_ entry: ConntrackEntry) -> ConntrackMatch? {
        zones.contains(entry.zone) ? matchInAnyZone(entry) : nil
    }

    /// How the entry would match were its zone selected: what a purge leaves in other zones is counted.
    public func matchInAnyZone(_ entry: ConntrackEntry) -> ConntrackMatch? {
        guard transports.contains(entry.transport) else { return nil }
        let original = entry.original.destination, replier = entry.reply.source
        if destinations.contains(where: { $0.matches(address: original.address, port: original.port) }) {
            return isAnsweredElsewhere(entry) ? nil : .originalDestination
        }
        if destinations.contains(where: { $0.matches(address: replier.address, port: replier.port) }) {
            return .replySource
        }
        return nil
    }

    /// Dialled to a destination but answered from an address none of them names: a DNAT sent it to
    /// a live C (a NodePort dialled on a dead node's address, served by a local pod), so the flow is
    /// C's, and neither it nor its socket is the destination's to end.
    public func isServedElsewhere(_ entry: ConntrackEntry) -> Bool {
        guard transports.contains(entry.transport) else { return false }
        let original = entry.original.destination
        return destinations.contains { $0.matches(address: original.address, port: original.port) } && isAnsweredElsewhere(entry)
    }

    private func isAnsweredElsewhere(_ entry: ConntrackEntry) -> Bool {
        let replier = entry.reply.source.address
        return !destinations.contains { $0.prefix?.contains(replier) ?? true }
    }

    public var socketQuery: SocketQuery {
        SocketQuery(destinations: destinations, transports: transports, states: states, includeTCPInfo: stuck != nil)
    }
}
