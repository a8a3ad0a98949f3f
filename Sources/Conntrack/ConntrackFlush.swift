import Netlink
import NetworkAddress
import OS

/// IPCTNL_MSG_CT_DELETE carrying CTA_FILTER: the kernel walks its table and deletes every entry the
/// filter matches, in one request (Linux 6.12+, "ctnetlink: support CTA_FILTER for flush").
///
/// A flush, so this is the one place that builds one, and it builds nothing wider than asked:
/// - the address is always compared (a flag word without it would match the port on every
///   address; one of 0 flushes the whole family);
/// - an IPv6 address only inside the flush canary's own zone (`FlushCanary`): 6.18 compares IPv6
///   filter addresses inverted, so anywhere else IPv6 is refused here and deleted entry by entry;
/// - the protocol is always compared, the port when the destination has one;
/// - the message always carries its tuple, so a kernel without the feature refuses it (EINVAL or
///   EOPNOTSUPP) instead of reading a bare CT_DELETE as "flush everything";
/// - the written bytes are checked again before they leave (`isNarrow`).
public struct ConntrackFlushRequest: NetlinkRequest, Equatable {
    public let filter: ConntrackFilter
    /// CTA_ZONE at the top level: only entries of this zone are compared (nil: every zone).
    public let zone: UInt16?

    public enum Refusal: Error, Equatable {
        /// 6.18 matches IPv6 filter addresses inverted: such a flush would delete every other address's entries.
        case ipv6
    }

    public init(_ filter: ConntrackFilter, zone: UInt16? = nil) throws(Refusal) {
        guard filter.address.family == .v4 || zone == FlushCanary.zone else { throw .ipv6 }
        self.filter = filter
        self.zone = zone
    }

    public var messageType: UInt16 { ConntrackMessageType.delete }
    public var flags: UInt16 { 0x1 | 0x4 }  // NLM_F_REQUEST | NLM_F_ACK
    public var netlinkOperation: NetlinkOperation { .conntrackDelete }
    public var operationDetail: String? { "filtered flush" }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        writeNetfilterHeader(family: filter.address.family, into: &writer)
        let start = writer.bytes.count
        filter.write(into: &writer, withAddress: true)
        precondition(Self.isNarrow(writer.bytes[start...], filter: filter), "a filtered flush wider than its filter")
        if let zone { writer.appendAttribute(type: ConntrackAttribute.zone, networkOrder: zone) }
    }

    /// The attributes name a tuple with the filter's IPv4 address and protocol, and CTA_FILTER's flag
    /// words compare exactly those (plus the port, if any) on that tuple's side and nothing on the other.
    static func isNarrow(_ bytes: ArraySlice<UInt8>, filter: ConntrackFilter) -> Bool {
        let attributes = NetlinkAttributes(bytes)
        // CTA_IP_V4_SRC 1, CTA_IP_V4_DST 2, CTA_IP_V6_SRC 3, CTA_IP_V6_DST 4
        let v6: UInt16 = filter.address.family == .v4 ? 0 : 2
        let (side, addressType, addressFlag): (UInt16, UInt16, UInt32) =
            switch filter {
            case .originalDestination: (ConntrackAttribute.tupleOriginal, 2 + v6, ConntrackFilter.flagIPDestination)
            case .replySource: (ConntrackAttribute.tupleReply, 1 + v6, ConntrackFilter.flagIPSource)
            }
        guard let tuple = attributes[side], let filterNest = attributes[ConntrackAttribute.filter],
            let address = tuple.nested[ConntrackAttribute.tupleIP]?.nested[addressType],
            Array(address.value) == filter.address.networkBytes,
            tuple.nested[ConntrackAttribute.tupleProto]?.nested[ConntrackAttribute.protoNumber] != nil,
            let original = filterNest.nested[ConntrackAttribute.filterOriginalFlags]?.reader.hostOrder(UInt32.self, at: 0),
            let reply = filterNest.nested[ConntrackAttribute.filterReplyFlags]?.reader.hostOrder(UInt32.self, at: 0)
        else { return false }
        let (compared, other) = side == ConntrackAttribute.tupleOriginal ? (original, reply) : (reply, original)
        let required = addressFlag | ConntrackFilter.flagProtoNumber
        return other == 0 && compared & required == required && compared == filter.flags(withAddress: true)
    }
}
