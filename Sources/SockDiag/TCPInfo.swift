import Netlink

/// The fields of `struct tcp_info` that say whether a connection is alive. Read by offset from
/// INET_DIAG_INFO, whose length grows with the kernel (280 bytes on 6.18, 104 in glibc's header).
public struct TCPInfo: Sendable, Equatable {
    public var retransmits: UInt8
    public var probes: UInt8
    public var backoff: UInt8
    public var rtoMicroseconds: UInt32
    /// Segments sent and not yet acknowledged.
    public var unacked: UInt32
    public var lastDataSentMilliseconds: UInt32
    public var lastDataReceivedMilliseconds: UInt32
    /// Age of the last ACK received: not the age of the oldest unacknowledged byte.
    public var lastAckReceivedMilliseconds: UInt32
    public var rttMicroseconds: UInt32
    public var totalRetransmits: UInt32

    public init(
        retransmits: UInt8 = 0, probes: UInt8 = 0, backoff: UInt8 = 0, rtoMicroseconds: UInt32 = 0,
        unacked: UInt32 = 0, lastDataSentMilliseconds: UInt32 = 0, lastDataReceivedMilliseconds: UInt32 = 0,
        lastAckReceivedMilliseconds: UInt32 = 0, rttMicroseconds: UInt32 = 0, totalRetransmits: UInt32 = 0
    ) {
        self.retransmits = retransmits
        self.probes = probes
        self.backoff = backoff
        self.rtoMicroseconds = rtoMicroseconds
        self.unacked = unacked
        self.lastDataSentMilliseconds = lastDataSentMilliseconds
        self.lastDataReceivedMilliseconds = lastDataReceivedMilliseconds
        self.lastAckReceivedMilliseconds = lastAckReceivedMilliseconds
        self.rttMicroseconds = rttMicroseconds
        self.totalRetransmits = totalRetransmits
    }

    /// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h); stable since the struct was created.
    enum Offset {
        static let retransmits = 2, probes = 3, backoff = 4, rto = 8, unacked = 24
        static let lastDataSent = 44, lastDataReceived = 52, lastAckReceived = 56, rtt = 68, totalRetransmits = 100
        static let minimumLength = 104
    }

    public init?(_ reader: ByteReader) {
        guard reader.count >= Offset.minimumLength else { return nil }
        func u8(_ offset: Int) -> UInt8 { reader.hostOrder(at: offset) ?? 0 }
        func u32(_ offset: Int) -> UInt32 { reader.hostOrder(at: offset) ?? 0 }
        self.init(
            retransmits: u8(Offset.retransmits), probes: u8(Offset.probes), backoff: u8(Offset.backoff),
            rtoMicroseconds: u32(Offset.rto), unacked: u32(Offset.unacked),
            lastDataSentMilliseconds: u32(Offset.lastDataSent),
            lastDataReceivedMilliseconds: u32(Offset.lastDataReceived),
            lastAckReceivedMilliseconds: u32(Offset.lastAckReceived), rttMicroseconds: u32(Offset.rtt),
            totalRetransmits: u32(Offset.totalRetransmits))
    }
}
