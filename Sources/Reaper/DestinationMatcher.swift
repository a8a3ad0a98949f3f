import Netlink
import NetworkAddress
import SockDiag

/// Decides which sockets and conntrack entries belong to a set of destinations. The kernel's
/// filters only narrow the dumps; this is the rule that counts, applied to every candidate.
public struct DestinationMatcher: Sendable {
    public let destinations: [Destination]
    public let transports: Set<TransportProtocol>
    public let states: SocketStates

    public init(destinations: [Destination], transports: Set<TransportProtocol>, states: SocketStates = .reapByDefault) {
        self.destinations = destinations
        self.transports = transports
        self.states = states
    }

    public func matches(_ socket: DiagnosedSocket) -> Bool {
        transports.contains(socket.transport) && states.contains(socket.state)
            && destinations.contains { $0.matches(address: socket.remote.address, port: socket.remote.port) }
    }

    /// How an entry matched: by where the client sent it, or by who answered (a NAT'd backend).
    public enum ConntrackMatch: String, Sendable, Codable {
        case originalDestination = "original-destination"
        case replySource = "reply-source"
    }

    public func match(_ entry: ConntrackEntry) -> ConntrackMatch? {
        guard transports.contains(entry.transport) else { return nil }
        let original = entry.original.destination, replier = entry.reply.source
        if destinations.contains(where: { $0.matches(address: original.address, port: original.port) }) {
            return .originalDestination
        }
        if destinations.contains(where: { $0.matches(address: replier.address, port: replier.port) }) {
            return .replySource
        }
        return nil
    }

    public var socketQuery: SocketQuery {
        SocketQuery(destinations: destinations, transports: transports, states: states)
    }
}
