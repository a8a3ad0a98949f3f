import Glibc
import Netlink
import NetworkAddress
import Testing

@testable import SockDiag

@Suite struct SockDiagMessageTests {
    let target = SocketID(
        source: Endpoint(address: IPAddress("10.0.0.1")!, port: 40000),
        destination: Endpoint(address: IPAddress("10.0.0.3")!, port: 6443),
        interface: 0, cookie: 0x0000_0001_0000_2A2A)

    @Test func destroyRequestEchoesTheIdWithItsCookie() {
        let bytes = InetDiagSocketRequest(.destroy, family: .inet, transport: .tcp, id: target).serialized(sequence: 7, portID: 0)
        let expected: [UInt8] =
            [72, 0, 0, 0, 21, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0]  // nlmsghdr: len 72, SOCK_DESTROY, REQUEST|ACK, seq 7
            + [2, 6, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]  // AF_INET, TCP, ext 0, pad, all states
            + [0x9C, 0x40, 0x19, 0x2B]  // sport 40000, dport 6443 (big-endian)
            + [10, 0, 0, 1] + [UInt8](repeating: 0, count: 12)
            + [10, 0, 0, 3] + [UInt8](repeating: 0, count: 12)
            + [0, 0, 0, 0]  // interface
            + [0x2A, 0x2A, 0, 0, 1, 0, 0, 0]  // cookie, two host-order words, low first
        #expect(bytes == expected)
    }

    /// The exact lookup an announced flow's socket is found by: no NLM_F_DUMP, no cookie.
    @Test func getRequestNamesTheTupleWithoutACookie() {
        let bytes = InetDiagSocketRequest(.get, family: .inet, transport: .tcp, id: target).serialized(sequence: 8, portID: 0)
        #expect(Array(bytes[0..<16]) == [72, 0, 0, 0, 20, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0])  // SOCK_DIAG_BY_FAMILY, REQUEST only
        #expect(Array(bytes[24..<28]) == [0x9C, 0x40, 0x19, 0x2B])
        #expect(Array(bytes[64..<72]) == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])  // INET_DIAG_NOCOOKIE
    }

    /// A rebalance looks its chosen socket up again, tcp_info included, to see it is still quiet.
    @Test func getRequestCanAskForTCPInfoOnlyForTCP() {
        let tcp = InetDiagSocketRequest(.get, family: .inet, transport: .tcp, id: target, includeTCPInfo: true).serialized(sequence: 8)
        #expect(Array(tcp[16..<20]) == [2, 6, 2, 0])  // AF_INET, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1)
        let udp = InetDiagSocketRequest(.get, family: .inet, transport: .udp, id: target, includeTCPInfo: true).serialized(sequence: 8)
        #expect(Array(udp[16..<20]) == [2, 17, 0, 0])
        let destroy = InetDiagSocketRequest(.destroy, family: .inet, transport: .tcp, id: target, includeTCPInfo: true)
        #expect(Array(destroy.serialized(sequence: 8)[16..<20]) == [2, 6, 0, 0])
    }

    @Test func dumpRequestCarriesStatesExtensionPortAndBytecode() {
        let program = InetDiagBytecode.program(matchingAny: [try! Destination(parsing: "10.200.0.2:6443")])
        let request = InetDiagDumpRequest(
            family: .inet6, transport: .tcp, states: .reapByDefault, includeTCPInfo: true,
            destinationPort: 6443, bytecode: program)
        let bytes = request.serialized(sequence: 1)
        #expect(bytes.count == 16 + 56 + 4 + 16)
        #expect(Array(bytes[4..<8]) == [20, 0, 0x01, 0x03])  // SOCK_DIAG_BY_FAMILY, REQUEST|DUMP
        #expect(Array(bytes[16..<24]) == [10, 6, 2, 0, 6, 0, 0, 0])  // AF_INET6, TCP, INET_DIAG_INFO, states 0x6
        #expect(Array(bytes[24..<28]) == [0, 0, 0x19, 0x2B])  // dport shortcut
        #expect(Array(bytes[64..<72]) == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])  // no cookie
        #expect(Array(bytes[72..<76]) == [20, 0, 1, 0])  // INET_DIAG_REQ_BYTECODE, 16 bytes
        #expect(Array(bytes[76...]) == program)
    }

    /// TCPDIAG_GETSOCK: struct inet_diag_req (family byte ignored, ext fourth, states after the id).
    @Test func oneWalkRequestIsTheOldInetDiagReq() {
        let program = InetDiagBytecode.program(matchingAny: [try! Destination(parsing: "10.200.0.2:6443")])
        let request = InetDiagDumpRequest(
            family: nil, transport: .tcp, states: .reapByDefault, includeTCPInfo: true, destinationPort: 6443, bytecode: program)
        let bytes = request.serialized(sequence: 1)
        #expect(bytes.count == 16 + 60 + 4 + 16)
        #expect(Array(bytes[4..<8]) == [18, 0, 0x01, 0x03])  // TCPDIAG_GETSOCK, REQUEST|DUMP
        #expect(Array(bytes[16..<20]) == [0, 0, 0, 2])  // AF_UNSPEC, src_len, dst_len, INET_DIAG_INFO
        #expect(Array(bytes[20..<24]) == [0, 0, 0x19, 0x2B])  // dport shortcut
        #expect(Array(bytes[60..<68]) == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])  // no cookie
        #expect(Array(bytes[68..<76]) == [6, 0, 0, 0, 0, 0, 0, 0])  // states 0x6, idiag_dbs
        #expect(Array(bytes[76..<80]) == [20, 0, 1, 0])  // INET_DIAG_REQ_BYTECODE
        #expect(Array(bytes[80...]) == program)
    }

    @Test func udpDumpAsksForNoTCPInfo() {
        let request = InetDiagDumpRequest(family: .inet, transport: .udp, states: .reapByDefault, includeTCPInfo: true)
        #expect(request.serialized(sequence: 1)[18] == 0)
    }

    /// A reply built as the kernel lays out inet_diag_msg, with an INET_DIAG_INFO attribute.
    @Test func parsesAReplyWithTCPInfo() throws {
        var tcpInfo = [UInt8](repeating: 0, count: 232)
        tcpInfo[TCPInfo.Offset.retransmits] = 5
        tcpInfo[TCPInfo.Offset.backoff] = 5
        tcpInfo.replaceSubrange(TCPInfo.Offset.unacked..<(TCPInfo.Offset.unacked + 4), with: UInt32(1).hostOrderBytes)
        tcpInfo.replaceSubrange(TCPInfo.Offset.lastAckReceived..<(TCPInfo.Offset.lastAckReceived + 4), with: UInt32(14_488).hostOrderBytes)
        var writer = NetlinkMessageWriter(type: 20, flags: 2, sequence: 9)
        writer.append([2, 1, 1, 5])  // AF_INET, ESTABLISHED, retransmit timer, 5 retransmits
        writer.append(Array(InetDiagSocketRequest(.destroy, family: .inet, transport: .tcp, id: target).serialized(sequence: 0)[24..<72]))
        for value: UInt32 in [200, 0, 17, 1000, 4242] { writer.append(hostOrder: value) }  // expires rq wq uid inode
        writer.appendAttribute(type: 2, value: tcpInfo)
        let message = try #require(Array(NetlinkMessages(datagram: writer.finish())).first)
        let socket = try #require(DiagnosedSocket(message: message, transport: .tcp))
        #expect(socket.id == target)
        #expect(socket.state == .established)
        #expect(socket.timer == 1)
        #expect(socket.sendQueue == 17)
        #expect(socket.uid == 1000)
        #expect(socket.tcpInfo == TCPInfo(retransmits: 5, backoff: 5, unacked: 1, lastAckReceivedMilliseconds: 14_488))
    }

    @Test func parsesAnIPv6SocketWithAMappedPeer() throws {
        let mapped = SocketID(
            source: Endpoint(address: IPAddress("::ffff:10.0.0.1")!, port: 1),
            destination: Endpoint(address: IPAddress("::ffff:10.0.0.3")!, port: 443), cookie: 9)
        var writer = NetlinkMessageWriter(type: 20, flags: 2, sequence: 1)
        writer.append([10, 2, 0, 0])
        writer.append(Array(InetDiagSocketRequest(.destroy, family: .inet6, transport: .tcp, id: mapped).serialized(sequence: 0)[24..<72]))
        writer.append([UInt8](repeating: 0, count: 20))
        let message = try #require(Array(NetlinkMessages(datagram: writer.finish())).first)
        let socket = try #require(DiagnosedSocket(message: message, transport: .tcp))
        #expect(socket.state == .synSent)
        #expect(socket.remote.description == "[::ffff:10.0.0.3]:443")
        #expect(socket.tcpInfo == nil)
    }

    @Test func shortRepliesAreRejectedNotTrapped() {
        var writer = NetlinkMessageWriter(type: 20, flags: 2, sequence: 1)
        writer.append([2, 1, 0, 0, 1, 2])
        let message = Array(NetlinkMessages(datagram: writer.finish())).first!
        #expect(DiagnosedSocket(message: message, transport: .tcp) == nil)
    }

    /// Our offsets against glibc's own `struct tcp_info` (the kernel only ever appends to it).
    @Test func tcpInfoOffsetsMatchGlibc() {
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_retransmits) == TCPInfo.Offset.retransmits)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_backoff) == TCPInfo.Offset.backoff)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_rto) == TCPInfo.Offset.rto)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_unacked) == TCPInfo.Offset.unacked)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_last_data_sent) == TCPInfo.Offset.lastDataSent)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_last_ack_recv) == TCPInfo.Offset.lastAckReceived)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_rtt) == TCPInfo.Offset.rtt)
        #expect(MemoryLayout<tcp_info>.offset(of: \.tcpi_total_retrans) == TCPInfo.Offset.totalRetransmits)
        #expect(MemoryLayout<tcp_info>.size == TCPInfo.Offset.minimumLength)
    }
}
