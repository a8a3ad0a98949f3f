import Netlink
import NetworkAddress
import OS

/// The address family of a sock_diag dump: one per family, AF_UNSPEC is refused by the kernel.
public enum SocketFamily: UInt8, Sendable, CaseIterable {
    case inet = 2  // AF_INET
    case inet6 = 10  // AF_INET6

    public init(_ family: IPAddress.Family) { self = family == .v4 ? .inet : .inet6 }
}

/// SOCK_DIAG_BY_FAMILY dump: `struct inet_diag_req_v2` plus an optional filter program. Without a
/// family, TCPDIAG_GETSOCK's `struct inet_diag_req` instead: the kernel reads it as AF_UNSPEC and
/// returns both families from one walk of the socket hash, where a dump per family walks it twice
/// (the hash is shared; each walk skips the other family's sockets one by one). TCP only.
public struct InetDiagDumpRequest: NetlinkRequest, Equatable {
    /// nil: both families in one walk.
    public var family: SocketFamily?
    public var transport: TransportProtocol
    public var states: SocketStates
    public var includeTCPInfo: Bool
    /// Kernel-side shortcut: with every destination on one port, the kernel skips other ports
    /// (and all listeners) before even running the program.
    public var destinationPort: UInt16
    public var bytecode: [UInt8]

    public init(
        family: SocketFamily?, transport: TransportProtocol, states: SocketStates,
        includeTCPInfo: Bool = false, destinationPort: UInt16 = 0, bytecode: [UInt8] = []
    ) {
        precondition(family != nil || transport == .tcp, "one walk for both families is TCPDIAG_GETSOCK: TCP only")
        self.family = family
        self.transport = transport
        self.states = states
        self.includeTCPInfo = includeTCPInfo
        self.destinationPort = destinationPort
        self.bytecode = bytecode
    }

    public var messageType: UInt16 { family == nil ? 18 : 20 }  // TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY
    public var flags: UInt16 { 0x1 | 0x300 }  // NLM_F_REQUEST | NLM_F_DUMP
    public var netlinkOperation: NetlinkOperation { family == nil ? .tcpDiagnosis : .socketDiagnosis }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        let extensions: UInt8 = includeTCPInfo && transport == .tcp ? 1 << (2 - 1) : 0  // INET_DIAG_INFO
        let anyAddress: IPAddress = family == .inet6 ? .v6(high: 0, low: 0) : .v4(0)
        let id = SocketID(
            source: Endpoint(address: anyAddress, port: 0),
            destination: Endpoint(address: anyAddress, port: destinationPort),
            cookie: SocketID.noCookie)
        if let family {
            writer.append([family.rawValue, transport.rawValue, extensions, 0])
            writer.append(hostOrder: states.mask)
            id.write(into: &writer)
        } else {
            writer.append([0, 0, 0, extensions])  // idiag_family (read as AF_UNSPEC), src_len, dst_len, ext
            id.write(into: &writer)
            writer.append(hostOrder: states.mask)
            writer.append(hostOrder: UInt32(0))  // idiag_dbs
        }
        if !bytecode.isEmpty {
            writer.appendAttribute(type: 1, value: bytecode)  // INET_DIAG_REQ_BYTECODE
        }
    }
}

/// A request about one socket named by family, protocol and id: a get (SOCK_DIAG_BY_FAMILY without
/// NLM_F_DUMP: the kernel looks the 4-tuple up in its hash, no walk, and answers with the socket or
/// ENOENT) or a SOCK_DESTROY (the id exactly as a dump gave it, cookie included).
public struct InetDiagSocketRequest: NetlinkRequest, Equatable {
    public enum Operation: Sendable, Equatable {
        case get, destroy
    }

    public var operation: Operation
    public var family: SocketFamily
    public var transport: TransportProtocol
    public var id: SocketID
    /// A get of a TCP socket asks for its tcp_info too (INET_DIAG_INFO).
    public var includeTCPInfo: Bool

    public init(_ operation: Operation, family: SocketFamily, transport: TransportProtocol, id: SocketID, includeTCPInfo: Bool = false) {
        self.operation = operation
        self.includeTCPInfo = includeTCPInfo && operation == .get && transport == .tcp
        self.family = family
        self.transport = transport
        // A get names the socket by its tuple alone: whichever socket holds it now is the answer.
        self.id = id
        if operation == .get { self.id.cookie = SocketID.noCookie }
    }

    public var messageType: UInt16 { operation == .get ? 20 : 21 }  // SOCK_DIAG_BY_FAMILY, SOCK_DESTROY
    public var flags: UInt16 { operation == .get ? 0x1 : 0x1 | 0x4 }  // NLM_F_REQUEST (| NLM_F_ACK)
    public var netlinkOperation: NetlinkOperation { operation == .get ? .socketDiagnosis : .socketDestroy }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        writer.append([family.rawValue, transport.rawValue, includeTCPInfo ? 1 << (2 - 1) : 0, 0])
        writer.append(hostOrder: UInt32.max)  // states: any, the id names the socket
        id.write(into: &writer)
    }
}
