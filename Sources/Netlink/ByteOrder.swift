// Netlink headers are in host byte order, ports and addresses in network order. conn-reaper runs on
// Linux, whose supported Swift targets (x86_64, aarch64) are little-endian; the helpers below say
// which order each field uses so the call sites read like the kernel's struct definitions.
#if !_endian(little)
    #error("conn-reaper encodes netlink host-order fields as little-endian")
#endif

extension FixedWidthInteger {
    @inlinable public var hostOrderBytes: [UInt8] {
        (0..<(Self.bitWidth / 8)).map { UInt8(truncatingIfNeeded: self >> ($0 * 8)) }
    }

    @inlinable public var networkOrderBytes: [UInt8] {
        hostOrderBytes.reversed()
    }
}
