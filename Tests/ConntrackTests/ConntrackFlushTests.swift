import Netlink
import NetworkAddress
import Testing

@testable import Conntrack

/// A filtered flush deletes whatever its filter matches, in the kernel: its bytes are checked here,
/// and no request wider than its filter can be built.
@Suite struct ConntrackFlushTests {
    let target = IPAddress("10.0.0.5")!

    /// kernel-notes.md: orig dst 10.240.0.2 tcp dport 7000 = ORIG_FLAGS 0x2a; here 10.0.0.5:6443.
    @Test func originalDestinationFlushBytes() throws {
        let bytes = try ConntrackFlushRequest(.originalDestination(target, port: 6443, .tcp)).serialized(sequence: 4)
        #expect(Array(bytes[4..<8]) == [0x02, 0x01, 0x05, 0x00])  // IPCTNL_MSG_CT_DELETE, REQUEST|ACK: no DUMP
        #expect(Array(bytes[16..<20]) == [2, 0, 0, 0])  // nfgenmsg AF_INET
        let expectedAttributes: [UInt8] =
            [36, 0, 1, 0x80]  // CTA_TUPLE_ORIG, nested
            + [12, 0, 1, 0x80, 8, 0, 2, 0, 10, 0, 0, 5]  // CTA_TUPLE_IP{CTA_IP_V4_DST}
            + [20, 0, 2, 0x80, 5, 0, 1, 0, 6, 0, 0, 0, 6, 0, 3, 0, 0x19, 0x2B, 0, 0]  // PROTO{NUM tcp, DST_PORT 6443}
            + [20, 0, 25, 0x80, 8, 0, 1, 0, 0x2A, 0, 0, 0, 8, 0, 2, 0, 0, 0, 0, 0]  // CTA_FILTER{ORIG 0x2a, REPLY 0}
        #expect(Array(bytes[20...]) == expectedAttributes)
    }

    @Test func replySourceFlushWithoutAPortComparesAddressAndProtocol() throws {
        let bytes = try ConntrackFlushRequest(.replySource(target, port: nil, .udp)).serialized(sequence: 4)
        let attributes = NetlinkAttributes(bytes[20...])
        #expect(attributes[1] == nil)  // no original tuple
        #expect(Array(attributes[2]?.nested[1]?.nested[1]?.value ?? []) == [10, 0, 0, 5])  // V4_SRC
        #expect(attributes[25]?.nested[1]?.reader.hostOrder(UInt32.self, at: 0) == 0)
        #expect(attributes[25]?.nested[2]?.reader.hostOrder(UInt32.self, at: 0) == 0x09)  // IP_SRC | PROTO_NUM
    }

    @Test func ipv6IsRefused() {
        #expect(throws: ConntrackFlushRequest.Refusal.ipv6) {
            try ConntrackFlushRequest(.originalDestination(IPAddress("fd00::5")!, port: 6443, .tcp))
        }
        let destinations = [try! Destination(parsing: "[fd00::5]:6443"), try! Destination(parsing: "10.0.0.0/24:80")]
        #expect(ConntrackTable.flushes(for: destinations, transports: [.tcp, .udp]).isEmpty)
    }

    /// Only the flush canary's trial flushes by an IPv6 address, and only inside the zone it names.
    @Test func ipv6FlushOnlyInsideAZoneAndTheZoneIsWritten() throws {
        let address = IPAddress("2001:db8::3")!
        let bytes = try ConntrackFlushRequest(.replySource(address, port: 0, .udp), zone: FlushCanary.zone).serialized(sequence: 4)
        #expect(Array(bytes[16..<20]) == [10, 0, 0, 0])  // nfgenmsg AF_INET6
        let attributes = NetlinkAttributes(bytes[20...])
        #expect(Array(attributes[2]?.nested[1]?.nested[3]?.value ?? []) == address.networkBytes)  // CTA_IP_V6_SRC
        #expect(attributes[18]?.reader.networkOrder(UInt16.self, at: 0) == FlushCanary.zone)  // CTA_ZONE
        #expect(attributes[25]?.nested[2]?.reader.hostOrder(UInt32.self, at: 0) == 0x19)  // IP_SRC | PROTO_NUM | SRC_PORT
        let unzoned = try ConntrackFlushRequest(.replySource(target, port: 0, .udp)).serialized(sequence: 4)
        #expect(NetlinkAttributes(unzoned[20...])[18] == nil, "a purge's flush compares every zone, as before")
    }

    /// The canary is nothing a host has: documentation addresses, UDP to port 0, a zone of its own;
    /// every flush of its trial names that zone and a documentation address.
    @Test func theCanaryAndItsTrialStayInTheirZone() throws {
        for family in [IPAddress.Family.v4, .v6] {
            let canary = FlushCanary.canary(family)
            #expect(canary.zone == FlushCanary.zone && canary.transport == .udp && canary.original.destination.port == 0)
            #expect(canary.reply.source == canary.original.destination && canary.reply.destination == canary.original.source)
            let documentation =
                family == .v4
                ? IPPrefix(address: IPAddress("192.0.2.0")!, length: 24)! : IPPrefix(address: IPAddress("2001:db8::")!, length: 32)!
            for address in [canary.original.source.address, canary.original.destination.address, FlushCanary.elsewhere(family)] {
                #expect(documentation.contains(address))
            }
            let trial =
                FlushCanary.flushes(toward: FlushCanary.elsewhere(family)) + FlushCanary.flushes(toward: canary.reply.source.address)
            #expect(trial.count == 4 && trial.allSatisfy { $0.zone == FlushCanary.zone })
            _ = try ConntrackCreateRequest(canary, timeoutSeconds: 30)
        }
    }

    @Test func oneFlushPerSideAndTransportForEachIPv4Host() throws {
        let destinations = [try Destination(parsing: "10.0.0.5:6443"), try Destination(parsing: "10.0.0.6")]
        let requests = ConntrackTable.flushes(for: destinations, transports: [.tcp])
        #expect(
            requests.map(\.filter) == [
                .originalDestination(target, port: 6443, .tcp), .replySource(target, port: 6443, .tcp),
                .originalDestination(IPAddress("10.0.0.6")!, port: nil, .tcp), .replySource(IPAddress("10.0.0.6")!, port: nil, .tcp),
            ])
        let dialled = ConntrackTable.flushes(for: destinations, transports: [.tcp], sides: [.originalDestination])
        #expect(
            dialled.map(\.filter) == [
                .originalDestination(target, port: 6443, .tcp), .originalDestination(IPAddress("10.0.0.6")!, port: nil, .tcp),
            ])
    }

    /// What the kernel would read as "flush everything" (both flag words 0, an empty CTA_FILTER), or
    /// as the port on every address, or another address, is never narrow.
    @Test func anythingWiderThanTheFilterIsCaught() throws {
        let filter = ConntrackFilter.originalDestination(target, port: 6443, .tcp)
        let bytes = try ConntrackFlushRequest(filter).serialized(sequence: 1)
        let attributes = Array(bytes[20...])
        #expect(ConntrackFlushRequest.isNarrow(attributes[...], filter: filter))
        let tuple = Array(attributes[0..<36]), flags = Array(attributes[36...])
        #expect(!ConntrackFlushRequest.isNarrow(tuple[...], filter: filter), "no CTA_FILTER")
        #expect(!ConntrackFlushRequest.isNarrow((tuple + [4, 0, 25, 0x80])[...], filter: filter), "empty CTA_FILTER")
        var zeroFlags = flags
        zeroFlags[8] = 0
        #expect(!ConntrackFlushRequest.isNarrow((tuple + zeroFlags)[...], filter: filter), "both flag words 0")
        var portOnly = flags
        portOnly[8] = 0x28  // PROTO_NUM | DST_PORT: every address
        #expect(!ConntrackFlushRequest.isNarrow((tuple + portOnly)[...], filter: filter))
        var bothSides = flags
        bothSides[16] = 0x01
        #expect(!ConntrackFlushRequest.isNarrow((tuple + bothSides)[...], filter: filter))
        var otherAddress = tuple
        otherAddress[19] = 6
        #expect(!ConntrackFlushRequest.isNarrow((otherAddress + flags)[...], filter: filter))
        var noAddress = Array(tuple[0..<4]) + Array(tuple[16...])
        noAddress[0] = UInt8(noAddress.count)
        #expect(!ConntrackFlushRequest.isNarrow((noAddress + flags)[...], filter: filter), "no CTA_TUPLE_IP")
    }

    /// A kernel before 6.12 answers a filtered flush with EINVAL or EOPNOTSUPP, deleting nothing: the
    /// purge then deletes entry by entry. EPERM or a lost ack is not a refusal of the feature.
    @Test func onlyEINVALAndEOPNOTSUPPMeanTheKernelLacksTheFlush() {
        #expect(ConntrackTable.isRefusal(.failed(.invalidArgument)))
        #expect(ConntrackTable.isRefusal(.failed(.notSupported)))
        #expect(!ConntrackTable.isRefusal(.failed(.notPermitted)))
        #expect(!ConntrackTable.isRefusal(.unconfirmed))
        #expect(!ConntrackTable.isRefusal(.done))
    }

    /// The verdicts that hold for a boot survive the memo's words; an untried one is tried again.
    @Test func aCanaryVerdictLastsTheBootUnlessUntried() {
        let lasting: [FlushCanary.Verdict] = [.trusted, .refused, .comparesWrongly("a flush for another address took the canary")]
        for verdict in lasting {
            #expect(verdict.memoText.flatMap(FlushCanary.Verdict.init(memoText:)) == verdict)
        }
        #expect(FlushCanary.Verdict.untried("an ack was lost").memoText == nil)
        #expect(FlushCanary.Verdict(memoText: "untried x") == nil)
        #expect(FlushCanary.Verdict(memoText: "Trusted") == nil)
    }
}
