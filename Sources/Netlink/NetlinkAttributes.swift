/// One netlink attribute (`struct nlattr` + value) in received bytes.
public struct NetlinkAttribute: Sendable {
    /// Type without the NLA_F_NESTED / NLA_F_NET_BYTEORDER bits.
    public let type: UInt16
    public let value: ArraySlice<UInt8>

    public var reader: ByteReader { ByteReader(value) }
    public var nested: NetlinkAttributes { NetlinkAttributes(value) }
}

/// The attributes that follow a fixed header; malformed trailing bytes end the sequence.
public struct NetlinkAttributes: Sequence, Sendable {
    public let bytes: ArraySlice<UInt8>

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
    }

    public struct Iterator: IteratorProtocol {
        let bytes: ArraySlice<UInt8>
        var offset: Int

        public mutating func next() -> NetlinkAttribute? {
            let reader = ByteReader(bytes[offset...])
            guard let length = reader.hostOrder(UInt16.self, at: 0).map(Int.init), length >= 4,
                let rawType = reader.hostOrder(UInt16.self, at: 2),
                let value = reader.slice(at: 4, count: length - 4)
            else { return nil }
            offset = Swift.min(offset + NetlinkAlignment.align(length), bytes.endIndex)  // an unpadded last attribute ends the walk
            return NetlinkAttribute(type: rawType & 0x3FFF, value: value)
        }
    }

    public func makeIterator() -> Iterator { Iterator(bytes: bytes, offset: bytes.startIndex) }

    public subscript(type: UInt16) -> NetlinkAttribute? {
        first { $0.type == type }
    }
}
