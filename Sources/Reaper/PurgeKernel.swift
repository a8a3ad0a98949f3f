import Conntrack
import Netlink
import NetworkAddress
import OS
import SockDiag

/// The sockets a purge acts on: exactly what `Purger` asks of sock_diag, and which sockets are this
/// process's own. A seam, so the executor's rounds and sparing rules are unit-tested against a fake
/// table (`KernelSocketTable` is the real one).
public protocol SocketTable {
    /// Every socket the kernel's filter lets through for `query`; callers re-check matches.
    /// `signal` is told mid-dump once a part has passed its count.
    func sockets(matching query: SocketQuery, signal: SocketDiagnostics.CountSignal?) throws(SystemCallError) -> SocketDiagnostics.Dump

    /// The socket with exactly this 4-tuple, if there is one (a hash lookup, no walk).
    func socket(
        exactly id: SocketID, family: SocketFamily, transport: TransportProtocol, includeTCPInfo: Bool
    ) throws(SystemCallError) -> DiagnosedSocket?

    /// The local endpoints TCP listens on: a connection whose local end is one was accepted here.
    func listeningEndpoints() throws(SystemCallError) -> [Endpoint]

    /// SOCK_DESTROY for each socket, one acknowledgement each, in order.
    func destroy(_ sockets: [DiagnosedSocket]) throws(SystemCallError) -> [Acknowledgement]

    /// The inodes of the sockets this process holds (the agent's probes), read afresh each call.
    func ownSocketInodes() -> Set<UInt32>
}

extension SocketTable {
    func sockets(matching query: SocketQuery) throws(SystemCallError) -> SocketDiagnostics.Dump {
        try sockets(matching: query, signal: nil)
    }

    func socket(exactly id: SocketID, family: SocketFamily, transport: TransportProtocol) throws(SystemCallError) -> DiagnosedSocket? {
        try socket(exactly: id, family: family, transport: transport, includeTCPInfo: false)
    }
}

/// The conntrack entries a purge deletes: exactly what `Purger` asks of ctnetlink (`KernelFlowTable`
/// is the real one).
///
/// Not `Sendable`, as the netlink sockets behind it are not: a purge hands its table to the
/// conntrack prefetch's `BackgroundWork` and touches it again only once that work's `wait()` has
/// returned (see `Purger.run`), so one thread at a time uses it.
public protocol FlowTable {
    /// The entries whose original destination or reply source is in `destinations` (candidates:
    /// callers re-check). `sideBySide`, `directFlows` and `dialledSide` as `ConntrackTable.entries`
    /// takes them: `directFlows` is asked once, when the reply-source side is due, and false leaves
    /// the direct flows out; `dialledSide` hears the original-destination side as soon as it is in.
    func entries(
        for destinations: [Destination], transports: Set<TransportProtocol>, sideBySide: Bool,
        directFlows: @escaping @Sendable () -> Bool, dialledSide: (ConntrackTable.Dump) -> Void
    ) throws(SystemCallError) -> ConntrackTable.Dump

    /// How many entries the table holds now; nil when the kernel does not say.
    func entryCount() throws(SystemCallError) -> Int?

    /// Deletes each entry, one acknowledgement each, in order.
    func delete(_ entries: [ConntrackEntry]) throws(SystemCallError) -> [Acknowledgement]

    /// Sends the filtered flushes; a refusal is remembered (`flushSupported` becomes false).
    func flush(_ requests: [ConntrackFlushRequest]) throws(SystemCallError) -> [Acknowledgement]

    /// Whether the filtered flush may be used: the canary's verdict, tried once and remembered.
    func verifyFlush() -> Bool

    /// What is known of the filtered flush without trying it: nil until tried, false once refused.
    var flushSupported: Bool? { get }
}

extension FlowTable {
    func entries(
        for destinations: [Destination], transports: Set<TransportProtocol>, sideBySide: Bool = false
    ) throws(SystemCallError) -> ConntrackTable.Dump {
        try entries(for: destinations, transports: transports, sideBySide: sideBySide, directFlows: { true }, dialledSide: { _ in })
    }
}
