import NetworkAddress
import SockDiag
import Conntrack

/// A flow as conntrack's original tuple names it: what ties a local socket to its conntrack entry.
/// A dual-stack socket's IPv4-mapped addresses are unmapped, as its (IPv4) entry names them.
struct Flow: Hashable, Sendable {
    var source: Endpoint
    var destination: Endpoint

    init(_ socket: DiagnosedSocket) {
        source = socket.local.unmapped
        destination = socket.remote.unmapped
    }

    init(_ entry: ConntrackEntry) {
        source = entry.original.source
        destination = entry.original.destination
    }
}
