import NetworkAddress
import SockDiag
import Conntrack

/// A flow as conntrack's original tuple names it: what ties a local socket to its conntrack entry.
/// A dual-stack socket's IPv4-mapped addresses are unmapped, as its (IPv4) entry names them.
struct Flow: Hashable, Sendable {
    var source: Endpoint
    var destination: Endpoint

    init(_ socket: DiagnosedSocket) {
        func plain(_ endpoint: Endpoint) -> Endpoint {
            Endpoint(address: endpoint.address.unmappedIPv4 ?? endpoint.address, port: endpoint.port)
        }
        source = plain(socket.local)
        destination = plain(socket.remote)
    }

    init(_ entry: ConntrackEntry) {
        source = entry.original.source
        destination = entry.original.destination
    }
}
