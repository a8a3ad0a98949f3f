import CLinuxNetlink

/// One netlink message inside a received datagram.
public struct NetlinkMessage: Sendable {
    public let type: UInt16
    public let flags: UInt16
    public let sequence: UInt32
    public let portID: UInt32
    /// Header and payload, as received.
    public let raw: ArraySlice<UInt8>

    public static let headerSize = 16

    public var payload: ArraySlice<UInt8> { raw.dropFirst(Self.headerSize) }

    public var isDone: Bool { type == UInt16(NLMSG_DONE) }
    public var isError: Bool { type == UInt16(NLMSG_ERROR) }
    /// The kernel changed the table while this dump ran: what was sent may be incomplete.
    public var isDumpInterrupted: Bool { flags & UInt16(NLM_F_DUMP_INTR) != 0 }

    /// For NLMSG_ERROR and NLMSG_DONE: the errno the kernel reported, 0 for a plain ack.
    public var errorCode: Int32? {
        guard isError || isDone else { return nil }
        // Wrapping: -Int32.min does not exist, and a nonsense error must still read as one, not trap.
        return ByteReader(payload).hostOrder(Int32.self, at: 0).map { 0 &- $0 } ?? 0
    }
}

/// Splits a datagram into its messages; stops at the first malformed length instead of trapping.
public struct NetlinkMessages: Sequence, Sendable {
    public let datagram: [UInt8]

    public init(datagram: [UInt8]) {
        self.datagram = datagram
    }

    public struct Iterator: IteratorProtocol {
        let datagram: [UInt8]
        var offset = 0

        public mutating func next() -> NetlinkMessage? {
            let reader = ByteReader(datagram[offset...])
            guard let length = reader.hostOrder(UInt32.self, at: 0).map(Int.init),
                length >= NetlinkMessage.headerSize, offset + length <= datagram.count,
                let type = reader.hostOrder(UInt16.self, at: 4),
                let flags = reader.hostOrder(UInt16.self, at: 6),
                let sequence = reader.hostOrder(UInt32.self, at: 8),
                let portID = reader.hostOrder(UInt32.self, at: 12)
            else { return nil }
            let message = NetlinkMessage(
                type: type, flags: flags, sequence: sequence, portID: portID,
                raw: datagram[offset..<(offset + length)])
            // The last message's padding may be missing: the cursor stops at the end, never past it.
            offset = Swift.min(offset + NetlinkAlignment.align(length), datagram.count)
            return message
        }
    }

    public func makeIterator() -> Iterator { Iterator(datagram: datagram) }
}

enum NetlinkAlignment {
    static func align(_ length: Int) -> Int { (length + 3) & ~3 }
}
