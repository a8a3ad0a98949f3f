import NetworkAddress

/// Builds one netlink message: header, fixed payload, attributes (nested ones too), with the
/// 4-byte alignment netlink expects. Plain bytes, so a test can compare a request with fixed bytes.
public struct NetlinkMessageWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(type: UInt16, flags: UInt16, sequence: UInt32, portID: UInt32 = 0) {
        bytes.reserveCapacity(128)
        append(hostOrder: UInt32(0))  // length, patched in `finish`
        append(hostOrder: type)
        append(hostOrder: flags)
        append(hostOrder: sequence)
        append(hostOrder: portID)
    }

    public mutating func append(_ raw: some Sequence<UInt8>) {
        bytes.append(contentsOf: raw)
    }

    // Byte by byte into the buffer, one concrete function per width: an intermediate array per
    // field (and unspecialized generics across modules) made request building the largest
    // user-space cost of a 20,000-socket purge.
    public mutating func append(hostOrder value: UInt8) { bytes.append(value) }
    public mutating func append(hostOrder value: UInt16) { appendBytes(UInt64(value), count: 2, bigEndian: false) }
    public mutating func append(hostOrder value: UInt32) { appendBytes(UInt64(value), count: 4, bigEndian: false) }
    public mutating func append(hostOrder value: Int32) { appendBytes(UInt64(UInt32(bitPattern: value)), count: 4, bigEndian: false) }
    public mutating func append(hostOrder value: UInt64) { appendBytes(value, count: 8, bigEndian: false) }
    public mutating func append(networkOrder value: UInt16) { appendBytes(UInt64(value), count: 2, bigEndian: true) }
    public mutating func append(networkOrder value: UInt32) { appendBytes(UInt64(value), count: 4, bigEndian: true) }
    public mutating func append(networkOrder value: UInt64) { appendBytes(value, count: 8, bigEndian: true) }

    private mutating func appendBytes(_ value: UInt64, count: Int, bigEndian: Bool) {
        for index in 0..<count {
            let shift = bigEndian ? (count - 1 - index) * 8 : index * 8
            bytes.append(UInt8(truncatingIfNeeded: value >> shift))
        }
    }

    /// An address in network order, left-aligned in `width` bytes (inet_diag's 16-byte fields).
    public mutating func append(address: IPAddress, width: Int) {
        switch address {
        case .v4(let value):
            append(networkOrder: value)
            for _ in 4..<width { bytes.append(0) }
        case .v6(let high, let low):
            append(networkOrder: high)
            append(networkOrder: low)
        }
    }

    public mutating func appendAttribute(type: UInt16, value: some Collection<UInt8>) {
        append(hostOrder: UInt16(4 + value.count))
        append(hostOrder: type)
        append(value)
        padToAlignment()
    }

    public mutating func appendAttribute(type: UInt16, networkOrder value: UInt16) {
        append(hostOrder: UInt16(6))
        append(hostOrder: type)
        append(networkOrder: value)
        padToAlignment()
    }

    public mutating func appendAttribute(type: UInt16, networkOrder value: UInt32) {
        append(hostOrder: UInt16(8))
        append(hostOrder: type)
        append(networkOrder: value)
    }

    /// Writes a nested attribute whose contents `body` appends.
    public mutating func appendNested(type: UInt16, _ body: (inout NetlinkMessageWriter) -> Void) {
        let start = bytes.count
        append(hostOrder: UInt16(0))
        append(hostOrder: type | Self.nestedFlag)
        body(&self)
        patch(hostOrder: UInt16(bytes.count - start), at: start)
    }

    public mutating func padToAlignment() {
        while bytes.count % 4 != 0 { bytes.append(0) }
    }

    /// The buffer, this message's length patched in.
    public consuming func finish() -> [UInt8] {
        padToAlignment()
        patch(hostOrder: UInt32(bytes.count), at: 0)
        return bytes
    }

    private mutating func patch(hostOrder value: UInt32, at offset: Int) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (index * 8)) }
    }

    private mutating func patch(hostOrder value: UInt16, at offset: Int) {
        for index in 0..<2 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (index * 8)) }
    }

    static let nestedFlag: UInt16 = 0x8000  // NLA_F_NESTED
}
