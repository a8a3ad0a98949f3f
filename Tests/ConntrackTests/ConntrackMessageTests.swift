import Netlink
import NetworkAddress
import Testing

@testable import Conntrack

@Suite struct ConntrackMessageTests {
    let natted = ConntrackEntry(
        family: .v4, transport: .tcp,
        original: .init(
            source: Endpoint(address: IPAddress("10.0.0.1")!, port: 40000),
            destination: Endpoint(address: IPAddress("10.96.0.1")!, port: 443)),
        reply: .init(
            source: Endpoint(address: IPAddress("10.0.0.5")!, port: 6443),
            destination: Endpoint(address: IPAddress("10.0.0.1")!, port: 40000)),
        zone: 7, id: 0xDEAD_BEEF)

    /// The reply-source filter from kernel-notes.md: CTA_TUPLE_REPLY{IP{V4_SRC}, PROTO{NUM, SRC_PORT}}
    /// and CTA_FILTER{ORIG_FLAGS 0, REPLY_FLAGS IP_SRC|PROTO_NUM|PROTO_SRC_PORT = 0x19}.
    @Test func replySourceFilterBytes() {
        let request = ConntrackDumpRequest(family: .v4, filter: .replySource(IPAddress("10.0.0.5")!, port: 6443, .tcp))
        let bytes = request.serialized(sequence: 3)
        #expect(Array(bytes[4..<8]) == [0x01, 0x01, 0x01, 0x03])  // IPCTNL_MSG_CT_GET, REQUEST|DUMP
        #expect(Array(bytes[16..<20]) == [2, 0, 0, 0])  // nfgenmsg AF_INET
        let expectedAttributes: [UInt8] =
            [36, 0, 2, 0x80]  // CTA_TUPLE_REPLY, nested
            + [12, 0, 1, 0x80, 8, 0, 1, 0, 10, 0, 0, 5]  // CTA_TUPLE_IP{CTA_IP_V4_SRC}
            + [20, 0, 2, 0x80, 5, 0, 1, 0, 6, 0, 0, 0, 6, 0, 2, 0, 0x19, 0x2B, 0, 0]  // PROTO{NUM tcp, SRC_PORT}
            + [20, 0, 25, 0x80, 8, 0, 1, 0, 0, 0, 0, 0, 8, 0, 2, 0, 0x19, 0, 0, 0]  // CTA_FILTER
        #expect(Array(bytes[20...]) == expectedAttributes)
    }

    @Test func originalDestinationFilterUsesDestinationFlags() {
        let request = ConntrackDumpRequest(family: .v4, filter: .originalDestination(IPAddress("10.0.0.5")!, port: nil, .udp))
        let bytes = request.serialized(sequence: 3)
        let attributes = Array(NetlinkAttributes(bytes[20...]))
        #expect(attributes[1].type == 25)
        #expect(attributes[1].nested[1]?.reader.hostOrder(UInt32.self, at: 0) == 0x0A)  // IP_DST | PROTO_NUM
        #expect(attributes[1].nested[2]?.reader.hostOrder(UInt32.self, at: 0) == 0)
        #expect(attributes[0].type == 1)
        #expect(Array(attributes[0].nested[1]?.nested[2]?.value ?? []) == [10, 0, 0, 5])  // V4_DST
    }

    /// Beside a reply-source dump, an original-destination dump asks only for translated entries:
    /// CTA_STATUS IPS_DST_NAT (0x20, big-endian) after CTA_FILTER; the mask defaults to the value.
    @Test func anOriginalDestinationDumpOfTranslatedEntriesOnlyCarriesTheStatusBit() throws {
        let filter = ConntrackFilter.originalDestination(IPAddress("10.0.0.5")!, port: 6443, .tcp)
        let plain = Array(NetlinkAttributes(ConntrackDumpRequest(family: .v4, filter: filter).serialized(sequence: 3)[20...]))
        #expect(plain.map(\.type) == [1, 25])
        let bytes = ConntrackDumpRequest(family: .v4, filter: filter, translatedOnly: true).serialized(sequence: 3)
        let attributes = Array(NetlinkAttributes(bytes[20...]))
        #expect(attributes.map(\.type) == [1, 25, 3])
        #expect(Array(attributes[2].value) == [0, 0, 0, 0x20])
        let requests = ConntrackTable.requests(for: [try Destination(parsing: "10.0.0.5:6443")], transports: [.tcp])
        #expect(
            requests == [
                ConntrackDumpRequest(family: .v4, filter: filter, translatedOnly: true),
                ConntrackDumpRequest(family: .v4, filter: .replySource(IPAddress("10.0.0.5")!, port: 6443, .tcp)),
            ])
    }

    /// A purge that flushes the direct flows unlisted asks both sides for translated entries only;
    /// where the status cannot tell (IPVS rewrites reply tuples without IPS_DST_NAT) neither side does.
    @Test func withoutDirectFlowsBothSidesAskForTranslatedEntriesUnlessTheStatusCannotTell() throws {
        let destination = [try Destination(parsing: "10.0.0.5:6443")]
        let original = ConntrackFilter.originalDestination(IPAddress("10.0.0.5")!, port: 6443, .tcp)
        let reply = ConntrackFilter.replySource(IPAddress("10.0.0.5")!, port: 6443, .tcp)
        #expect(
            ConntrackTable.requests(for: destination, transports: [.tcp], directFlows: false) == [
                ConntrackDumpRequest(family: .v4, filter: original, translatedOnly: true),
                ConntrackDumpRequest(family: .v4, filter: reply, translatedOnly: true),
            ])
        #expect(
            ConntrackTable.requests(for: destination, transports: [.tcp], directFlows: false, statusNamesTranslations: false) == [
                ConntrackDumpRequest(family: .v4, filter: original), ConntrackDumpRequest(family: .v4, filter: reply),
            ])
    }

    /// IPCTNL_MSG_CT_GET_STATS (0x105), NLM_F_REQUEST alone, an nfgenmsg of AF_UNSPEC.
    @Test func theTableSizeRequestBytes() {
        let bytes = ConntrackStatisticsRequest().serialized(sequence: 9)
        #expect(bytes == [20, 0, 0, 0, 0x05, 0x01, 0x01, 0x00, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// 6.18 inverts the IPv6 address comparison in CTA_FILTER: an IPv6 filter names no address.
    @Test func ipv6FiltersNarrowByProtocolAndPortOnly() {
        let request = ConntrackDumpRequest(family: .v6, filter: .replySource(IPAddress("fd00::5")!, port: 6443, .tcp))
        let bytes = request.serialized(sequence: 3)
        #expect(bytes[16] == 10)
        let attributes = Array(NetlinkAttributes(bytes[20...]))
        #expect(attributes[0].type == 2)
        #expect(attributes[0].nested[1] == nil)  // no CTA_TUPLE_IP
        #expect(attributes[1].nested[2]?.reader.hostOrder(UInt32.self, at: 0) == 0x18)  // PROTO_NUM | PROTO_SRC_PORT
    }

    /// libnetfilter_conntrack writes the delete and reads it back: tuple, zone and id survive.
    @Test func deleteRoundTripsThroughTheLibrary() throws {
        let bytes = try ConntrackDeleteRequest(entry: natted).serialized(sequence: 1)
        #expect(Array(bytes[4..<8]) == [0x02, 0x01, 0x05, 0x00])  // IPCTNL_MSG_CT_DELETE, REQUEST|ACK
        let message = try #require(Array(NetlinkMessages(datagram: bytes)).first)
        let types = Array(NetlinkAttributes(message.payload.dropFirst(4))).map(\.type)
        #expect(types.contains(1) && types.contains(12) && types.contains(18))  // ORIG, ID, ZONE
        #expect(!types.contains(2))  // no reply tuple: the original names the entry
        let parsed = try #require(ConntrackCodec.entry(from: message))
        #expect(parsed.original == natted.original)
        #expect(parsed.zone == 7)
        #expect(parsed.id == 0xDEAD_BEEF)
    }

    func newMessage(_ attributes: [UInt8], header: [UInt8] = [2, 0, 0, 0]) -> NetlinkMessage {
        var writer = NetlinkMessageWriter(type: 0x100, flags: 2, sequence: 1)  // IPCTNL_MSG_CT_NEW, MULTI
        writer.append(header)  // nfgenmsg: AF_INET
        writer.append(attributes)
        return Array(NetlinkMessages(datagram: writer.finish()))[0]
    }

    /// Found by the conntrack fuzz target: libnetfilter_conntrack 1.0.9 ends the whole process
    /// (exit 1, "kernel ABI is broken") on an attribute of the wrong size. Such a message is
    /// refused before the library sees it; a well-formed one still parses.
    @Test(arguments: [
        [7, 0, 12, 0, 1, 2, 3, 0] as [UInt8],  // CTA_ID of 3 bytes
        [8, 0, 18, 0, 0, 0, 0, 7],  // CTA_ZONE of 4 bytes
        [16, 0, 1, 0x80, 12, 0, 1, 0x80, 6, 0, 1, 0, 10, 0, 0, 0],  // CTA_TUPLE_ORIG{IP{V4_SRC of 2 bytes}}
        [16, 0, 4, 0x80, 12, 0, 1, 0x80, 7, 0, 4, 0, 1, 2, 3, 0],  // CTA_PROTOINFO{TCP{FLAGS_ORIGINAL of 3 bytes}}
        [6, 0, 20, 0x80, 0, 0, 0, 0],  // CTA_TIMESTAMP nested, 2 bytes inside
        [12, 0, 1, 0x80, 8, 0, 3, 0, 0, 0, 0, 0],  // CTA_TUPLE_ORIG{CTA_TUPLE_ZONE of 4 bytes}
        [12, 0, 24, 0x80, 6, 0, 1, 0, 0, 0, 0, 0],  // CTA_SYNPROXY{ISN of 2 bytes}
    ])
    func aMalformedAttributeIsRefusedNotFatal(malformed: [UInt8]) throws {
        let wellFormed = try ConntrackCodec.deleteAttributes(for: natted)
        #expect(ConntrackCodec.entry(from: newMessage(wellFormed))?.original == natted.original)
        #expect(ConntrackCodec.entry(from: newMessage(wellFormed + malformed)) == nil)
    }

    /// A message shorter than nfgenmsg made the library's payload length wrap around.
    @Test func aMessageWithoutItsNetfilterHeaderIsRefused() {
        #expect(ConntrackCodec.entry(from: newMessage([], header: [2, 0])) == nil)
    }

    @Test func requestsAreKernelFilteredForFewExactDestinationsOnly() throws {
        let exact = ConntrackTable.requests(for: [try Destination(parsing: "10.0.0.5:6443")], transports: [.tcp, .udp])
        #expect(exact.count == 4)
        #expect(exact.contains(ConntrackDumpRequest(family: .v4, filter: .replySource(IPAddress("10.0.0.5")!, port: 6443, .udp))))
        let cidr = ConntrackTable.requests(for: [try Destination(parsing: "10.0.0.0/24")], transports: [.tcp])
        #expect(cidr == [ConntrackDumpRequest(family: .v4)])
        let portOnly = ConntrackTable.requests(for: [try Destination(parsing: ":53")], transports: [.udp])
        #expect(portOnly == [ConntrackDumpRequest(family: .v4), ConntrackDumpRequest(family: .v6)])
    }

    /// A CT_DELETE without CTA_TUPLE_ORIG flushes the whole table: such bytes are never accepted
    /// as a delete, whatever else they carry.
    @Test func aDeleteWithoutItsTupleIsRefused() throws {
        #expect(!ConntrackDeleteRequest.namesOriginalTuple([]))
        let zoneOnly: [UInt8] = [6, 0, 18, 0, 0, 7, 0, 0]  // CTA_ZONE alone
        #expect(!ConntrackDeleteRequest.namesOriginalTuple(zoneOnly))
        let emptyTuple: [UInt8] = [4, 0, 1, 0x80] + zoneOnly  // CTA_TUPLE_ORIG with nothing in it
        #expect(!ConntrackDeleteRequest.namesOriginalTuple(emptyTuple))
        let built = try ConntrackCodec.deleteAttributes(for: natted)
        #expect(ConntrackDeleteRequest.namesOriginalTuple(built))
        // Every delete the request type writes carries the tuple: IP and protocol inside CTA_TUPLE_ORIG.
        let bytes = try ConntrackDeleteRequest(entry: natted).serialized(sequence: 9)
        let tuple = try #require(NetlinkAttributes(bytes[20...])[1])
        #expect(Array(tuple.nested[1]?.nested[1]?.value ?? []) == [10, 0, 0, 1])  // V4_SRC
        #expect(Array(tuple.nested[1]?.nested[2]?.value ?? []) == [10, 96, 0, 1])  // V4_DST
    }
}
