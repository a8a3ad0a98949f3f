import NetworkAddress

/// Which sockets a dump asks the kernel for.
public struct SocketQuery: Sendable, Equatable {
    public var destinations: [Destination]
    public var transports: Set<TransportProtocol>
    public var states: SocketStates
    public var includeTCPInfo: Bool

    public init(
        destinations: [Destination], transports: Set<TransportProtocol> = [.tcp],
        states: SocketStates = .reapByDefault, includeTCPInfo: Bool = false
    ) {
        self.destinations = destinations
        self.transports = transports
        self.states = states
        self.includeTCPInfo = includeTCPInfo
    }

    /// A program's JMP offsets are 16-bit: about 2,000 conditions fit. Larger sets are dumped in parts.
    static let destinationsPerProgram = 1_000

    /// The dump requests that cover the query: one per family and transport (and part of a large
    /// set); with `oneWalk`, one per part for TCP's two families.
    public func requests(oneWalk: Bool) -> [InetDiagDumpRequest] {
        guard !destinations.isEmpty else { return [] }
        var requests: [InetDiagDumpRequest] = []
        for transport in TransportProtocol.allCases where transports.contains(transport) {
            let walks: [(SocketFamily?, [Destination])] =
                oneWalk && transport == .tcp
                ? [(nil, destinations)]
                : SocketFamily.allCases.map { family in
                    (family, destinations.filter { $0.familiesToDump.contains(family == .inet ? .v4 : .v6) })
                }
            for (family, relevant) in walks {
                for part in stride(from: 0, to: relevant.count, by: Self.destinationsPerProgram) {
                    let chunk = Array(relevant[part..<min(part + Self.destinationsPerProgram, relevant.count)])
                    let ports = Set(chunk.map(\.port))
                    requests.append(
                        InetDiagDumpRequest(
                            family: family, transport: transport, states: states,
                            includeTCPInfo: includeTCPInfo,
                            destinationPort: ports.count == 1 ? (ports.first! ?? 0) : 0,
                            bytecode: InetDiagBytecode.program(matchingAny: chunk)))
                }
            }
        }
        return requests
    }
}
