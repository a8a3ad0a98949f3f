import NetworkAddress

/// One conntrack entry, as plain values. Produced and consumed by `ConntrackCodec`.
public struct ConntrackEntry: Sendable, Hashable {
    public struct Tuple: Sendable, Hashable {
        public var source: Endpoint
        public var destination: Endpoint

        public init(source: Endpoint, destination: Endpoint) {
            self.source = source
            self.destination = destination
        }
    }

    public var family: IPAddress.Family
    public var transport: TransportProtocol
    public var original: Tuple
    /// For a DNAT'd flow the reply source is the real backend, the original destination the VIP.
    public var reply: Tuple
    public var zone: UInt16
    /// Kept in every delete so a recycled tuple is not hit.
    public var id: UInt32?
    public var mark: UInt32
    /// TCP conntrack state number (include/uapi/linux/netfilter/nf_conntrack_tcp.h), nil for UDP.
    public var tcpState: UInt8?
    public var timeoutSeconds: UInt32?

    /// What names an entry in the table: a timeout or counter change does not make it another entry.
    public struct Identity: Hashable, Sendable {
        public var original: Tuple
        public var transport: TransportProtocol
        public var zone: UInt16
    }

    public var identity: Identity { Identity(original: original, transport: transport, zone: zone) }

    public init(
        family: IPAddress.Family, transport: TransportProtocol, original: Tuple, reply: Tuple,
        zone: UInt16 = 0, id: UInt32? = nil, mark: UInt32 = 0, tcpState: UInt8? = nil, timeoutSeconds: UInt32? = nil
    ) {
        self.family = family
        self.transport = transport
        self.original = original
        self.reply = reply
        self.zone = zone
        self.id = id
        self.mark = mark
        self.tcpState = tcpState
        self.timeoutSeconds = timeoutSeconds
    }
}
