/// An address with a prefix length: `10.0.0.0/8`, `fd00::/64`, or a single host at full length.
public struct IPPrefix: Hashable, Sendable {
    public let address: IPAddress
    public let length: Int

    public init?(address: IPAddress, length: Int) {
        guard (0...address.family.bitWidth).contains(length) else { return nil }
        self.address = address
        self.length = length
    }

    public init(host: IPAddress) {
        self.address = host
        self.length = host.family.bitWidth
    }

    public var isSingleHost: Bool { length == address.family.bitWidth }

    /// True when `candidate` lies inside the prefix. An IPv4 prefix also contains the
    /// IPv4-mapped IPv6 form of its addresses, as the kernel's D_COND does.
    public func contains(_ candidate: IPAddress) -> Bool {
        switch (address, candidate) {
        case (.v4(let mine), .v4(let theirs)):
            return Self.sameLeadingBits(UInt64(mine) << 32, UInt64(theirs) << 32, count: length)
        case (.v4, .v6):
            guard let unmapped = candidate.unmappedIPv4 else { return false }
            return contains(unmapped)
        case (.v6(let myHigh, let myLow), .v6(let theirHigh, let theirLow)):
            if length <= 64 { return Self.sameLeadingBits(myHigh, theirHigh, count: length) }
            return myHigh == theirHigh && Self.sameLeadingBits(myLow, theirLow, count: length - 64)
        case (.v6, .v4):
            return false
        }
    }

    private static func sameLeadingBits(_ a: UInt64, _ b: UInt64, count: Int) -> Bool {
        guard count > 0 else { return true }
        let mask: UInt64 = count >= 64 ? .max : ~(UInt64.max >> count)
        return a & mask == b & mask
    }
}

extension IPPrefix: CustomStringConvertible {
    public var description: String {
        isSingleHost ? address.description : "\(address)/\(length)"
    }
}
