import CNetfilterConntrack
import CMnl
import Netlink
import NetworkAddress
import SystemPackage
import OS

/// Reads and writes conntrack entries through libnetfilter_conntrack, so the tuple encoding is the
/// library's, not ours. The pointer work stays inside these functions.
public enum ConntrackCodec {
    /// Parses an IPCTNL_MSG_CT_NEW reply (what a dump sends); nil for anything else or unsupported L4.
    public static func entry(from message: NetlinkMessage) -> ConntrackEntry? {
        guard message.payload.count >= 4, ConntrackAttributeCheck.accepts(NetlinkAttributes(message.payload.dropFirst(4))),
            let conntrack = nfct_new()
        else { return nil }
        defer { nfct_destroy(conntrack) }
        let parsed = message.raw.withUnsafeBytes { raw -> Int32 in
            guard let header = raw.baseAddress?.assumingMemoryBound(to: nlmsghdr.self) else { return -1 }
            return nfct_nlmsg_parse(header, conntrack)
        }
        guard parsed >= 0 else { return nil }
        return entry(from: conntrack)
    }

    /// Whether an entry's reply source is its original destination (no DNAT between them), read from
    /// the two tuples alone, before the entry is parsed: a dump that wants translated entries only
    /// skips it (the reply-source dump or a flush has it).
    static func repliedByItsDestination(_ message: NetlinkMessage) -> Bool {
        guard message.payload.count >= 4 else { return false }
        let attributes = NetlinkAttributes(message.payload.dropFirst(4))
        guard let original = attributes[ConntrackAttribute.tupleOriginal], let reply = attributes[ConntrackAttribute.tupleReply],
            let originalIP = original.nested[ConntrackAttribute.tupleIP], let replyIP = reply.nested[ConntrackAttribute.tupleIP],
            // CTA_IP_V4_DST 2 or CTA_IP_V6_DST 4; CTA_IP_V4_SRC 1 or CTA_IP_V6_SRC 3.
            let destination = originalIP.nested[2] ?? originalIP.nested[4], let replier = replyIP.nested[1] ?? replyIP.nested[3],
            let port = original.nested[ConntrackAttribute.tupleProto]?.nested[ConntrackAttribute.protoDestinationPort],
            let replierPort = reply.nested[ConntrackAttribute.tupleProto]?.nested[ConntrackAttribute.protoSourcePort]
        else { return false }
        return destination.value.elementsEqual(replier.value) && port.value.elementsEqual(replierPort.value)
    }

    /// The attributes of an IPCTNL_MSG_CT_DELETE that names `entry`: original tuple, zone, id.
    /// Throws rather than return less: a CT_DELETE without a tuple is a flush of the whole table.
    public static func deleteAttributes(for entry: ConntrackEntry) throws(SystemCallError) -> [UInt8] {
        guard let conntrack = nfct_new() else { throw SystemCallError(call: "nfct_new", errno: .noMemory, layer: .conntrack) }
        defer { nfct_destroy(conntrack) }
        set(entry, into: conntrack)
        return try built(conntrack)
    }

    /// The attributes of an IPCTNL_MSG_CT_NEW that makes `entry`: both tuples, zone, and its
    /// timeout (the kernel refuses a create without one).
    static func createAttributes(for entry: ConntrackEntry, timeoutSeconds: UInt32) throws(SystemCallError) -> [UInt8] {
        guard let conntrack = nfct_new() else { throw SystemCallError(call: "nfct_new", errno: .noMemory, layer: .conntrack) }
        defer { nfct_destroy(conntrack) }
        set(entry, into: conntrack)
        set(entry.reply, of: entry, as: .reply, into: conntrack)
        nfct_set_attr_u32(conntrack, ATTR_TIMEOUT, timeoutSeconds)
        return try built(conntrack)
    }

    /// What nfct_nlmsg_build writes for `conntrack`, after the nfgenmsg the caller writes itself.
    private static func built(_ conntrack: OpaquePointer) throws(SystemCallError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 512)
        let length = buffer.withUnsafeMutableBytes { raw -> Int in
            guard let header = mnl_nlmsg_put_header(raw.baseAddress) else { return -1 }
            _ = mnl_nlmsg_put_extra_header(header, 4)  // struct nfgenmsg, written by the caller
            let headerLength = Int(header.pointee.nlmsg_len)
            guard nfct_nlmsg_build(header, conntrack) == 0 else { return -1 }
            return Int(header.pointee.nlmsg_len) - headerLength
        }
        guard length > 0 else { throw SystemCallError(call: "nfct_nlmsg_build", errno: .invalidArgument, layer: .conntrack) }
        return Array(buffer[(NetlinkMessage.headerSize + 4)..<(NetlinkMessage.headerSize + 4 + length)])
    }

    private static func entry(from conntrack: OpaquePointer) -> ConntrackEntry? {
        let l3 = nfct_get_attr_u8(conntrack, ATTR_ORIG_L3PROTO)
        guard let transport = TransportProtocol(rawValue: nfct_get_attr_u8(conntrack, ATTR_ORIG_L4PROTO)) else {
            return nil
        }
        let family: IPAddress.Family
        func address(_ v4: nf_conntrack_attr, _ v6: nf_conntrack_attr) -> IPAddress? {
            if l3 == 2 { return .v4(UInt32(bigEndian: nfct_get_attr_u32(conntrack, v4))) }
            guard let pointer = nfct_get_attr(conntrack, v6) else { return nil }
            return IPAddress(networkBytes: UnsafeRawBufferPointer(start: pointer, count: 16))
        }
        switch l3 {
        case 2: family = .v4
        case 10: family = .v6
        default: return nil
        }
        func port(_ attribute: nf_conntrack_attr) -> UInt16 { UInt16(bigEndian: nfct_get_attr_u16(conntrack, attribute)) }
        guard let originalSource = address(ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC),
            let originalDestination = address(ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST),
            let replySource = address(ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC),
            let replyDestination = address(ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST)
        else { return nil }
        func optional32(_ attribute: nf_conntrack_attr) -> UInt32? {
            nfct_attr_is_set(conntrack, attribute) > 0 ? nfct_get_attr_u32(conntrack, attribute) : nil
        }
        return ConntrackEntry(
            family: family, transport: transport,
            original: .init(
                source: Endpoint(address: originalSource, port: port(ATTR_ORIG_PORT_SRC)),
                destination: Endpoint(address: originalDestination, port: port(ATTR_ORIG_PORT_DST))),
            reply: .init(
                source: Endpoint(address: replySource, port: port(ATTR_REPL_PORT_SRC)),
                destination: Endpoint(address: replyDestination, port: port(ATTR_REPL_PORT_DST))),
            zone: nfct_attr_is_set(conntrack, ATTR_ZONE) > 0 ? nfct_get_attr_u16(conntrack, ATTR_ZONE) : 0,
            id: optional32(ATTR_ID),
            mark: optional32(ATTR_MARK) ?? 0,
            tcpState: nfct_attr_is_set(conntrack, ATTR_TCP_STATE) > 0 ? nfct_get_attr_u8(conntrack, ATTR_TCP_STATE) : nil,
            timeoutSeconds: optional32(ATTR_TIMEOUT))
    }

    private static func set(_ entry: ConntrackEntry, into conntrack: OpaquePointer) {
        set(entry.original, of: entry, as: .original, into: conntrack)
        nfct_set_attr_u16(conntrack, ATTR_ZONE, entry.zone)
        if let id = entry.id { nfct_set_attr_u32(conntrack, ATTR_ID, id) }
    }

    /// libnetfilter_conntrack's attribute numbers for one direction's tuple.
    private struct TupleAttributes {
        let l3, l4, v4Source, v4Destination, v6Source, v6Destination, sourcePort, destinationPort: nf_conntrack_attr
        static let original = TupleAttributes(
            l3: ATTR_ORIG_L3PROTO, l4: ATTR_ORIG_L4PROTO, v4Source: ATTR_ORIG_IPV4_SRC, v4Destination: ATTR_ORIG_IPV4_DST,
            v6Source: ATTR_ORIG_IPV6_SRC, v6Destination: ATTR_ORIG_IPV6_DST, sourcePort: ATTR_ORIG_PORT_SRC,
            destinationPort: ATTR_ORIG_PORT_DST)
        static let reply = TupleAttributes(
            l3: ATTR_REPL_L3PROTO, l4: ATTR_REPL_L4PROTO, v4Source: ATTR_REPL_IPV4_SRC, v4Destination: ATTR_REPL_IPV4_DST,
            v6Source: ATTR_REPL_IPV6_SRC, v6Destination: ATTR_REPL_IPV6_DST, sourcePort: ATTR_REPL_PORT_SRC,
            destinationPort: ATTR_REPL_PORT_DST)
    }

    private static func set(
        _ tuple: ConntrackEntry.Tuple, of entry: ConntrackEntry, as attributes: TupleAttributes, into conntrack: OpaquePointer
    ) {
        nfct_set_attr_u8(conntrack, attributes.l3, entry.family == .v4 ? 2 : 10)
        nfct_set_attr_u8(conntrack, attributes.l4, entry.transport.rawValue)
        switch (tuple.source.address, tuple.destination.address) {
        case (.v4(let source), .v4(let destination)):
            nfct_set_attr_u32(conntrack, attributes.v4Source, source.bigEndian)
            nfct_set_attr_u32(conntrack, attributes.v4Destination, destination.bigEndian)
        case (let source, let destination):
            source.networkBytes.withUnsafeBytes { nfct_set_attr_l(conntrack, attributes.v6Source, $0.baseAddress, 16) }
            destination.networkBytes.withUnsafeBytes { nfct_set_attr_l(conntrack, attributes.v6Destination, $0.baseAddress, 16) }
        }
        nfct_set_attr_u16(conntrack, attributes.sourcePort, tuple.source.port.bigEndian)
        nfct_set_attr_u16(conntrack, attributes.destinationPort, tuple.destination.port.bigEndian)
    }
}
