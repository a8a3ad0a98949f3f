import Netlink
import NetworkAddress
import OS

/// ctnetlink message types: NFNL_SUBSYS_CTNETLINK (1) in the high byte.
enum ConntrackMessageType {
    static let new: UInt16 = 0x100  // IPCTNL_MSG_CT_NEW: what a dump replies with, and a create
    static let get: UInt16 = 0x101  // IPCTNL_MSG_CT_GET
    static let delete: UInt16 = 0x102  // IPCTNL_MSG_CT_DELETE
    static let statistics: UInt16 = 0x105  // IPCTNL_MSG_CT_GET_STATS
}

/// Attribute numbers from include/uapi/linux/netfilter/nfnetlink_conntrack.h.
enum ConntrackAttribute {
    static let tupleOriginal: UInt16 = 1  // CTA_TUPLE_ORIG
    static let tupleReply: UInt16 = 2  // CTA_TUPLE_REPLY
    static let status: UInt16 = 3  // CTA_STATUS
    static let id: UInt16 = 12  // CTA_ID
    static let zone: UInt16 = 18  // CTA_ZONE
    static let filter: UInt16 = 25  // CTA_FILTER, kernel 5.8+
    static let tupleIP: UInt16 = 1  // CTA_TUPLE_IP
    static let tupleProto: UInt16 = 2  // CTA_TUPLE_PROTO
    static let protoNumber: UInt16 = 1  // CTA_PROTO_NUM
    static let protoSourcePort: UInt16 = 2  // CTA_PROTO_SRC_PORT
    static let protoDestinationPort: UInt16 = 3  // CTA_PROTO_DST_PORT
    static let filterOriginalFlags: UInt16 = 1  // CTA_FILTER_ORIG_FLAGS
    static let filterReplyFlags: UInt16 = 2  // CTA_FILTER_REPLY_FLAGS
}

/// ip_conntrack_status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
enum ConntrackStatus {
    /// IPS_DST_NAT: the reply tuple's source is a translated destination, not the original one.
    static let destinationNAT: UInt32 = 1 << 5
}

/// CTA_STATS_* of an IPCTNL_MSG_CT_GET_STATS answer.
enum ConntrackStatisticsAttribute {
    static let entries: UInt16 = 1  // CTA_STATS_GLOBAL_ENTRIES: this namespace's, big-endian u32
}

/// IPCTNL_MSG_CT_GET_STATS: how many entries the namespace's table holds (a counter the kernel
/// keeps, no walk).
public struct ConntrackStatisticsRequest: NetlinkRequest, Equatable {
    public init() {}

    public var messageType: UInt16 { ConntrackMessageType.statistics }
    public var flags: UInt16 { 0x1 }  // NLM_F_REQUEST
    public var netlinkOperation: NetlinkOperation { .conntrackStatistics }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        writer.append([0, 0])  // nfgen_family AF_UNSPEC, version NFNETLINK_V0
        writer.append(networkOrder: UInt16(0))  // res_id
    }
}

/// The struct nfgenmsg every ctnetlink message starts with.
func writeNetfilterHeader(family: IPAddress.Family, into writer: inout NetlinkMessageWriter) {
    writer.append([family == .v4 ? 2 : 10, 0])  // nfgen_family, version NFNETLINK_V0
    writer.append(networkOrder: UInt16(0))  // res_id
}

/// Which side of an entry a kernel-side filter looks at. Orig and reply conditions AND together
/// in the kernel, so "orig dst OR reply src" takes two dumps.
public enum ConntrackFilter: Sendable, Equatable {
    /// Original destination is the address (and port): what a client dialled directly.
    case originalDestination(IPAddress, port: UInt16?, TransportProtocol)
    /// Reply source is the address (and port): the real backend behind a DNAT.
    case replySource(IPAddress, port: UInt16?, TransportProtocol)

    static let flagIPSource: UInt32 = 1 << 0
    static let flagIPDestination: UInt32 = 1 << 1
    static let flagProtoNumber: UInt32 = 1 << 3
    static let flagProtoSourcePort: UInt32 = 1 << 4
    static let flagProtoDestinationPort: UInt32 = 1 << 5
}

/// IPCTNL_MSG_CT_GET dump of one family, optionally filtered in the kernel.
public struct ConntrackDumpRequest: NetlinkRequest, Equatable {
    public var family: IPAddress.Family
    public var filter: ConntrackFilter?
    /// Only entries a DNAT sent elsewhere (CTA_STATUS IPS_DST_NAT, Linux 5.15+; older kernels
    /// ignore it and send every match). An original-destination dump beside a reply-source one
    /// wants only these: an untranslated entry's reply source is its original destination, so the
    /// other dump has it, and building its message twice was a third of the kernel's dump time.
    public var translatedOnly: Bool

    public init(family: IPAddress.Family, filter: ConntrackFilter? = nil, translatedOnly: Bool = false) {
        self.family = family
        self.filter = filter
        self.translatedOnly = translatedOnly
    }

    public var messageType: UInt16 { ConntrackMessageType.get }
    public var flags: UInt16 { 0x1 | 0x300 }  // NLM_F_REQUEST | NLM_F_DUMP
    public var netlinkOperation: NetlinkOperation { .conntrackGet }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        writeNetfilterHeader(family: family, into: &writer)
        guard let filter else { return }
        // Kernel 6.18's ctnetlink compares IPv6 filter addresses inverted (`!ipv6_addr_cmp`): an
        // IPv6 address filter returns every entry except the one asked for. IPv6 dumps are
        // therefore narrowed by protocol and port only; the caller's user-space check does the rest.
        filter.write(into: &writer, withAddress: filter.address.family == .v4)
        // Without CTA_STATUS_MASK the kernel masks with the value: entries with the bit set.
        if translatedOnly { writer.appendAttribute(type: ConntrackAttribute.status, networkOrder: ConntrackStatus.destinationNAT) }
    }
}

extension ConntrackFilter {
    var address: IPAddress {
        switch self {
        case .originalDestination(let address, _, _), .replySource(let address, _, _): address
        }
    }

    /// The flag word naming what the filter compares (nf_internals.h's CTA_FILTER_FLAG bits).
    func flags(withAddress: Bool) -> UInt32 {
        let (port, isSource): (UInt16?, Bool) =
            switch self {
            case .originalDestination(_, let port, _): (port, false)
            case .replySource(_, let port, _): (port, true)
            }
        var flags = Self.flagProtoNumber
        if withAddress { flags |= isSource ? Self.flagIPSource : Self.flagIPDestination }
        if port != nil { flags |= isSource ? Self.flagProtoSourcePort : Self.flagProtoDestinationPort }
        return flags
    }

    /// The partial tuple the filter compares and CTA_FILTER's two flag words.
    func write(into writer: inout NetlinkMessageWriter, withAddress: Bool) {
        let (tuple, address, port, transport, isSource): (UInt16, IPAddress, UInt16?, TransportProtocol, Bool) =
            switch self {
            case .originalDestination(let a, let p, let t): (ConntrackAttribute.tupleOriginal, a, p, t, false)
            case .replySource(let a, let p, let t): (ConntrackAttribute.tupleReply, a, p, t, true)
            }
        writer.appendNested(type: tuple) { tupleWriter in
            if withAddress {
                tupleWriter.appendNested(type: ConntrackAttribute.tupleIP) { ip in
                    // CTA_IP_V4_SRC 1, CTA_IP_V4_DST 2 (CTA_IP_V6_SRC 3, CTA_IP_V6_DST 4)
                    let v4 = address.family == .v4
                    ip.appendAttribute(type: isSource ? (v4 ? 1 : 3) : (v4 ? 2 : 4), value: address.networkBytes)
                }
            }
            tupleWriter.appendNested(type: ConntrackAttribute.tupleProto) { proto in
                proto.appendAttribute(type: ConntrackAttribute.protoNumber, value: [transport.rawValue])
                if let port {
                    proto.appendAttribute(
                        type: isSource ? ConntrackAttribute.protoSourcePort : ConntrackAttribute.protoDestinationPort,
                        networkOrder: port)
                }
            }
        }
        let flags = self.flags(withAddress: withAddress)
        writer.appendNested(type: ConntrackAttribute.filter) { filterWriter in
            filterWriter.appendAttribute(type: ConntrackAttribute.filterOriginalFlags, value: (isSource ? 0 : flags).hostOrderBytes)
            filterWriter.appendAttribute(type: ConntrackAttribute.filterReplyFlags, value: (isSource ? flags : 0).hostOrderBytes)
        }
    }
}

/// IPCTNL_MSG_CT_DELETE of one entry by original tuple, zone and id.
///
/// The kernel reads a CT_DELETE without CTA_TUPLE_ORIG (and without CTA_FILTER) as "flush the whole
/// table". So the tuple is built when the request is made, which throws if it cannot be, and
/// checked again where the message is written: no delete leaves without its tuple.
public struct ConntrackDeleteRequest: NetlinkRequest, Equatable {
    public let entry: ConntrackEntry
    /// CTA_TUPLE_ORIG and CTA_ZONE as libnetfilter_conntrack writes them.
    let tupleAttributes: [UInt8]

    public init(entry: ConntrackEntry) throws(SystemCallError) {
        let attributes = try ConntrackCodec.deleteAttributes(for: entry)
        guard Self.namesOriginalTuple(attributes) else {
            throw SystemCallError(.conntrackDelete, errno: .invalidArgument)
        }
        self.entry = entry
        self.tupleAttributes = attributes
    }

    public var messageType: UInt16 { ConntrackMessageType.delete }
    public var flags: UInt16 { 0x1 | 0x4 }  // NLM_F_REQUEST | NLM_F_ACK
    public var netlinkOperation: NetlinkOperation { .conntrackDelete }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        precondition(Self.namesOriginalTuple(tupleAttributes), "a CT_DELETE without its tuple would flush the table")
        writeNetfilterHeader(family: entry.family, into: &writer)
        writer.append(tupleAttributes)
        // libnetfilter_conntrack 1.0.9 writes the tuple and zone but never CTA_ID; without it a
        // delete could hit a newer entry that reuses the tuple.
        if let id = entry.id { writer.appendAttribute(type: ConntrackAttribute.id, networkOrder: id) }
    }

    /// A CTA_TUPLE_ORIG carrying both the addresses (CTA_TUPLE_IP) and the protocol (CTA_TUPLE_PROTO).
    static func namesOriginalTuple(_ attributes: [UInt8]) -> Bool {
        guard let tuple = NetlinkAttributes(attributes[...])[ConntrackAttribute.tupleOriginal] else { return false }
        let ip = tuple.nested[ConntrackAttribute.tupleIP], proto = tuple.nested[ConntrackAttribute.tupleProto]
        return (ip.map { !$0.value.isEmpty } ?? false) && (proto?.nested[ConntrackAttribute.protoNumber] != nil)
    }
}
