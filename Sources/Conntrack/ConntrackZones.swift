/// Which conntrack zones a purge's entries are taken from. A zone keeps apart flows whose tuples
/// may be the same (a VRF's, another tenant's network, an OVS datapath's): an entry toward the
/// dead backend's address in another zone may be another host's. So a purge takes zone 0's, the
/// zone every flow is in unless a rule says otherwise, and others only when asked (`--zone`).
public enum ConntrackZones: Sendable, Hashable {
    case all
    case only(Set<UInt16>)

    public static let standard = ConntrackZones.only([0])

    public func contains(_ zone: UInt16) -> Bool {
        switch self {
        case .all: true
        case .only(let zones): zones.contains(zone)
        }
    }

    /// How a filtered flush names the zones: `.some(nil)` every zone (no CTA_ZONE), `.some(z)` that
    /// one; nil where no single flush can (several zones, each would take a walk of its own).
    public var flushZone: UInt16?? {
        switch self {
        case .all: .some(nil)
        case .only(let zones): zones.count == 1 ? .some(zones.first) : nil
        }
    }
}
