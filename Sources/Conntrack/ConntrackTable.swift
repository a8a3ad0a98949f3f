import Netlink
import NetworkAddress
import OS

/// The conntrack table of one network namespace, through ctnetlink (needs CAP_NET_ADMIN even to read).
public final class ConntrackTable {
    private let dumpSocket: NetlinkSocket
    private let deleteSocket: NetlinkSocket

    /// Up to this many single-address destinations are filtered in the kernel, two dumps each;
    /// beyond it one unfiltered dump per family is cheaper.
    static let kernelFilteredDestinationLimit = 16

    public init() throws(SystemCallError) {
        dumpSocket = try NetlinkSocket(bus: .netfilter)
        deleteSocket = try NetlinkSocket(bus: .netfilter)
        try dumpSocket.setReceiveTimeout(milliseconds: 10_000)
        try deleteSocket.setReceiveTimeout(milliseconds: 10_000)
        try deleteSocket.setReceiveBufferSize(16 << 20)
        try? deleteSocket.capAcknowledgements()
    }

    public struct Dump: Sendable {
        /// Candidates: kernels before 5.8 ignore the filter, so callers re-check every entry.
        public var entries: [ConntrackEntry] = []
        public var interrupted = false
        public var restarts = 0
        public var redone = 0
    }

    /// The dumps that can hold an entry whose original destination or reply source is in `destinations`.
    public static func requests(
        for destinations: [Destination], transports: Set<TransportProtocol>
    ) -> [ConntrackDumpRequest] {
        guard !destinations.isEmpty, !transports.isEmpty else { return [] }
        let exact = destinations.allSatisfy { $0.prefix?.isSingleHost == true }
        guard exact, destinations.count <= kernelFilteredDestinationLimit else {
            let families = Set(destinations.map { $0.prefix?.address.family }).flatMap {
                $0.map { [$0] } ?? [.v4, .v6]
            }
            return Set(families).sorted { $0 == .v4 && $1 == .v6 }.map { ConntrackDumpRequest(family: $0) }
        }
        var requests: [ConntrackDumpRequest] = []
        for destination in destinations {
            let address = destination.prefix!.address
            for transport in TransportProtocol.allCases where transports.contains(transport) {
                requests.append(
                    ConntrackDumpRequest(
                        family: address.family, filter: .originalDestination(address, port: destination.port, transport)))
                requests.append(
                    ConntrackDumpRequest(
                        family: address.family, filter: .replySource(address, port: destination.port, transport)))
            }
        }
        return requests
    }

    public func entries(
        for destinations: [Destination], transports: Set<TransportProtocol>
    ) throws(SystemCallError) -> Dump {
        var dump = Dump()
        var seen = Set<ConntrackEntry.Identity>()
        for request in Self.requests(for: destinations, transports: transports) {
            let outcome = try dumpSocket.dump(request) { message in
                guard message.type == ConntrackMessageType.new, let entry = ConntrackCodec.entry(from: message),
                    seen.insert(entry.identity).inserted
                else { return }
                dump.entries.append(entry)
            }
            dump.interrupted = dump.interrupted || outcome.interrupted
            dump.restarts += outcome.restarts
            dump.redone += outcome.redone
        }
        return dump
    }

    /// Deletes each entry, batched. ENOENT means already gone (timed out or deleted meanwhile).
    /// An entry whose delete cannot be built (no tuple) is never sent: its acknowledgement is EINVAL.
    public func delete(_ entries: [ConntrackEntry], batchSize: Int = 1024) throws(SystemCallError) -> [Acknowledgement] {
        var results = [Acknowledgement](repeating: .failed(.invalidArgument), count: entries.count)
        var requests: [ConntrackDeleteRequest] = []
        var positions: [Int] = []
        for (index, entry) in entries.enumerated() {
            guard let request = try? ConntrackDeleteRequest(entry: entry) else { continue }
            requests.append(request)
            positions.append(index)
        }
        let acknowledgements = try deleteSocket.exchangeAcknowledged(requests, batchSize: batchSize)
        for (position, acknowledgement) in zip(positions, acknowledgements) { results[position] = acknowledgement }
        return results
    }
}
