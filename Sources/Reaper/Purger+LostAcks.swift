import Conntrack
import NetworkAddress
import SockDiag

/// How a purge settles a destroy or delete whose ack was lost (ENOBUFS) once no round looks at it
/// again: the kernel may well have done it, and the report counts only what it confirmed.
extension Purger {
    /// A destroy whose ack was lost, settled by the socket's exact 4-tuple (a hash lookup, no walk):
    /// gone, or another socket on the tuple now, is ended; still there, or not looked at, unconfirmed.
    static func settle(lostAckOf socket: DiagnosedSocket, in diagnostics: any SocketTable) -> PurgeReport.Outcome {
        do {
            guard let now = try diagnostics.socket(exactly: socket.id, family: socket.family, transport: socket.transport) else {
                return .ended
            }
            return now.id.cookie == socket.id.cookie ? .unconfirmed : .ended
        } catch {
            return .unconfirmed
        }
    }

    /// Deletes whose ack was lost and that no round looked at again, settled by one more filtered dump
    /// (ctnetlink has no cheaper look at a few entries): an entry it no longer lists is ended, one
    /// still there (or a dump that failed or tore) unconfirmed.
    static func settle(
        lostAcks targets: [PurgePlan.EntryTarget], toward destinations: [Destination], transports: Set<TransportProtocol>,
        in table: any FlowTable, report: inout PurgeReport
    ) {
        var listed: Set<ConntrackEntry.Identity>?
        if let dump = try? table.entries(for: destinations, transports: transports) {
            report.note(dumpRestarts: dump.restarts, redone: dump.redone, operation: .conntrackGet)
            if !dump.interrupted { listed = Set(dump.entries.map(\.identity)) }
        }
        for (entry, matchedBy) in targets {
            let gone = listed.map { !$0.contains(entry.identity) } ?? false
            report.conntrack.append(.init(entry: entry, matchedBy: matchedBy, outcome: gone ? .ended : .unconfirmed))
        }
    }
}
