import Netlink
import NetworkAddress

/// One socket as a sock_diag dump reported it (`struct inet_diag_msg` and its attributes).
public struct DiagnosedSocket: Sendable, Equatable {
    public var family: SocketFamily
    public var transport: TransportProtocol
    public var state: SocketState
    /// idiag_timer: 1 retransmit, 2 keepalive, 4 zero-window probe.
    public var timer: UInt8
    public static let retransmitTimer: UInt8 = 1
    public var retransmitsOnTimer: UInt8
    public var id: SocketID
    public var receiveQueue: UInt32
    /// Send-Q: bytes written and not yet acknowledged, sent or not.
    public var sendQueue: UInt32
    public var uid: UInt32
    public var inode: UInt32
    /// The cgroup (v2) of the process that made it (INET_DIAG_CGROUP_ID, kernel 5.7+; nil before).
    public var cgroup: UInt64?
    public var tcpInfo: TCPInfo?

    public var local: Endpoint { id.source }
    public var remote: Endpoint { id.destination }

    public var destroyRequest: InetDiagSocketRequest {
        InetDiagSocketRequest(.destroy, family: family, transport: transport, id: id)
    }

    static let messageSize = 72

    public init(
        family: SocketFamily, transport: TransportProtocol, state: SocketState, id: SocketID,
        timer: UInt8 = 0, retransmitsOnTimer: UInt8 = 0, receiveQueue: UInt32 = 0, sendQueue: UInt32 = 0,
        uid: UInt32 = 0, inode: UInt32 = 0, cgroup: UInt64? = nil, tcpInfo: TCPInfo? = nil
    ) {
        self.family = family
        self.transport = transport
        self.state = state
        self.id = id
        self.timer = timer
        self.retransmitsOnTimer = retransmitsOnTimer
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
        self.uid = uid
        self.inode = inode
        self.cgroup = cgroup
        self.tcpInfo = tcpInfo
    }

    /// Parses one SOCK_DIAG_BY_FAMILY reply; nil for a short or foreign message.
    public init?(message: NetlinkMessage, transport: TransportProtocol) {
        let reader = ByteReader(message.payload)
        guard let familyByte = reader.hostOrder(UInt8.self, at: 0),
            let family = SocketFamily(rawValue: familyByte),
            let state = reader.hostOrder(UInt8.self, at: 1).flatMap(SocketState.init(rawValue:)),
            let timer = reader.hostOrder(UInt8.self, at: 2),
            let retransmits = reader.hostOrder(UInt8.self, at: 3),
            let id = SocketID(reading: reader, at: 4, family: familyByte),
            let receiveQueue = reader.hostOrder(UInt32.self, at: 56),
            let sendQueue = reader.hostOrder(UInt32.self, at: 60),
            let uid = reader.hostOrder(UInt32.self, at: 64),
            let inode = reader.hostOrder(UInt32.self, at: 68)
        else { return nil }
        self.family = family
        self.transport = transport
        self.state = state
        self.timer = timer
        self.retransmitsOnTimer = retransmits
        self.id = id
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
        self.uid = uid
        self.inode = inode
        let attributes = NetlinkAttributes(message.payload.dropFirst(Self.messageSize))
        self.tcpInfo = attributes[2].flatMap { TCPInfo($0.reader) }  // INET_DIAG_INFO
        self.cgroup = attributes[21].flatMap { $0.reader.hostOrder(UInt64.self, at: 0) }  // INET_DIAG_CGROUP_ID
    }
}
