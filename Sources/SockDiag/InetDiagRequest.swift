import Netlink
import NetworkAddress

/// The address family of a sock_diag dump: one per family, AF_UNSPEC is refused by the kernel.
public enum SocketFamily: UInt8, Sendable, CaseIterable {
    case inet = 2  // AF_INET
    case inet6 = 10  // AF_INET6

    public init(_ family: IPAddress.Family) { self = family == .v4 ? .inet : .inet6 }
}

/// SOCK_DIAG_BY_FAMILY dump: `struct inet_diag_req_v2` plus an optional filter program.
public struct InetDiagDumpRequest: NetlinkRequest, Equatable {
    public var family: SocketFamily
    public var transport: TransportProtocol
    public var states: SocketStates
    public var includeTCPInfo: Bool
    /// Kernel-side shortcut: with every destination on one port, the kernel skips other ports
    /// (and all listeners) before even running the program.
    public var destinationPort: UInt16
    public var bytecode: [UInt8]

    public init(
        family: SocketFamily, transport: TransportProtocol, states: SocketStates,
        includeTCPInfo: Bool = false, destinationPort: UInt16 = 0, bytecode: [UInt8] = []
    ) {
        self.family = family
        self.transport = transport
        self.states = states
        self.includeTCPInfo = includeTCPInfo
        self.destinationPort = destinationPort
        self.bytecode = bytecode
    }

    public var messageType: UInt16 { 20 }  // SOCK_DIAG_BY_FAMILY
    public var flags: UInt16 { 0x1 | 0x300 }  // NLM_F_REQUEST | NLM_F_DUMP
    public var callName: String { "SOCK_DIAG_BY_FAMILY" }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        writer.append([family.rawValue, transport.rawValue, includeTCPInfo && transport == .tcp ? 1 << (2 - 1) : 0, 0])
        writer.append(hostOrder: states.mask)
        let anyAddress: IPAddress = family == .inet ? .v4(0) : .v6(high: 0, low: 0)
        SocketID(
            source: Endpoint(address: anyAddress, port: 0),
            destination: Endpoint(address: anyAddress, port: destinationPort),
            cookie: SocketID.noCookie
        ).write(into: &writer)
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
    public var callName: String { operation == .get ? "SOCK_DIAG_BY_FAMILY" : "SOCK_DESTROY" }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        writer.append([family.rawValue, transport.rawValue, includeTCPInfo ? 1 << (2 - 1) : 0, 0])
        writer.append(hostOrder: UInt32.max)  // states: any, the id names the socket
        id.write(into: &writer)
    }
}
