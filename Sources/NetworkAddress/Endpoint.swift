/// An address and port: one end of a socket or of a conntrack tuple.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(address.family == .v6 ? 48 : 21)
        appendText(to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The same end with an IPv4-mapped address (`::ffff:a.b.c.d`, a dual-stack socket's name for an
    /// IPv4 peer) as plain IPv4: how a backend, or a conntrack entry, names it.
    public var unmapped: Endpoint {
        address.unmappedIPv4.map { Endpoint(address: $0, port: port) } ?? self
    }
}
