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

    public mutating func append<T: FixedWidthInteger>(hostOrder value: T) {
        bytes.append(contentsOf: value.hostOrderBytes)
    }

    public mutating func append<T: FixedWidthInteger>(networkOrder value: T) {
        bytes.append(contentsOf: value.networkOrderBytes)
    }

    public mutating func appendAttribute(type: UInt16, value: some Collection<UInt8>) {
        append(hostOrder: UInt16(4 + value.count))
        append(hostOrder: type)
        append(value)
        padToAlignment()
    }

    public mutating func appendAttribute<T: FixedWidthInteger>(type: UInt16, networkOrder value: T) {
        appendAttribute(type: type, value: value.networkOrderBytes)
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

    public consuming func finish() -> [UInt8] {
        padToAlignment()
        patch(hostOrder: UInt32(bytes.count), at: 0)
        return bytes
    }

    private mutating func patch<T: FixedWidthInteger>(hostOrder value: T, at offset: Int) {
        for (index, byte) in value.hostOrderBytes.enumerated() { bytes[offset + index] = byte }
    }

    static let nestedFlag: UInt16 = 0x8000  // NLA_F_NESTED
}
