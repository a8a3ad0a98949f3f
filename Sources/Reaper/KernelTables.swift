import Conntrack
import Netlink
import NetworkAddress
import OS
import SockDiag

/// sock_diag of the namespace its `SocketDiagnostics` was opened in, and /proc/self/fd for this
/// process's own sockets.
struct KernelSocketTable: SocketTable {
    let diagnostics: SocketDiagnostics

    init(_ diagnostics: SocketDiagnostics) {
        self.diagnostics = diagnostics
    }

    func sockets(
        matching query: SocketQuery, signal: SocketDiagnostics.CountSignal?
    ) throws(SystemCallError) -> SocketDiagnostics.Dump {
        try diagnostics.sockets(matching: query, signal: signal)
    }

    func socket(
        exactly id: SocketID, family: SocketFamily, transport: TransportProtocol, includeTCPInfo: Bool
    ) throws(SystemCallError) -> DiagnosedSocket? {
        try diagnostics.socket(exactly: id, family: family, transport: transport, includeTCPInfo: includeTCPInfo)
    }

    func listeningEndpoints() throws(SystemCallError) -> [Endpoint] {
        try diagnostics.listeningEndpoints()
    }

    func destroy(_ sockets: [DiagnosedSocket]) throws(SystemCallError) -> [Acknowledgement] {
        try diagnostics.destroy(sockets)
    }

    func ownSocketInodes() -> Set<UInt32> {
        OwnSockets.inodes()
    }
}

/// ctnetlink of the namespace its `ConntrackTable` was opened in. What the process learnt of the
/// filtered flush is `ConntrackTable.flushSupported`, shared by every namespace's table.
struct KernelFlowTable: FlowTable {
    let table: ConntrackTable

    init(_ table: ConntrackTable) {
        self.table = table
    }

    func entries(
        for destinations: [Destination], transports: Set<TransportProtocol>, sideBySide: Bool,
        directFlows: @escaping @Sendable () -> Bool, dialledSide: (ConntrackTable.Dump) -> Void
    ) throws(SystemCallError) -> ConntrackTable.Dump {
        try table.entries(
            for: destinations, transports: transports, sideBySide: sideBySide, directFlows: directFlows, dialledSide: dialledSide)
    }

    func entryCount() throws(SystemCallError) -> Int? {
        try table.entryCount()
    }

    func delete(_ entries: [ConntrackEntry]) throws(SystemCallError) -> [Acknowledgement] {
        try table.delete(entries)
    }

    func flush(_ requests: [ConntrackFlushRequest]) throws(SystemCallError) -> [Acknowledgement] {
        try table.flush(requests)
    }

    func verifyFlush() -> Bool {
        table.verifyFlush()
    }

    var flushSupported: Bool? {
        ConntrackTable.flushSupported.withLock { $0 }
    }
}
