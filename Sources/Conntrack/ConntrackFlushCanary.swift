import Netlink
import NetworkAddress
import OS
import SystemPackage

/// Before a filtered flush is trusted with the host's entries, it is tried on a canary: an entry
/// made for the purpose between documentation addresses (RFC 5737, RFC 3849), UDP to port 0 (which
/// no socket can send to), in a zone of its own, with every flush of the trial confined to that zone.
/// Flushes for another address on either side must leave it; a flush for its own address, on either
/// side, must take it. A kernel can get this wrong: 6.18 compares IPv6 filter addresses inverted,
/// which the IPv6 trial shows; so can the zone filter (zone 0 read as every zone), which the IPv4
/// trial checks. Costs four or five walks of the table, once per process and family.
public enum FlushCanary {
    /// A zone no flow of this host is expected in; the trial's flushes name it, so they compare nothing else.
    public static let zone: UInt16 = 65_534
    static let timeoutSeconds: UInt32 = 30

    public enum Verdict: Sendable, Equatable {
        /// Kept by flushes for another address, taken by its own, on both sides.
        case trusted
        /// The kernel has no filtered flush (before 6.12): EINVAL or EOPNOTSUPP, nothing deleted.
        case refused
        /// The flush did not compare as asked; what it did.
        case comparesWrongly(String)
        /// The trial could not be made (the canary was refused, an ack was lost): why.
        case untried(String)
    }

    static func canary(_ family: IPAddress.Family) -> ConntrackEntry {
        let (client, server) =
            family == .v4
            ? (IPAddress("192.0.2.1")!, IPAddress("192.0.2.2")!) : (IPAddress("2001:db8::1")!, IPAddress("2001:db8::2")!)
        let dialled = Endpoint(address: server, port: 0), from = Endpoint(address: client, port: 1)
        return ConntrackEntry(
            family: family, transport: .udp, original: .init(source: from, destination: dialled),
            reply: .init(source: dialled, destination: from), zone: zone)
    }

    /// An address of the same family that the canary does not have.
    static func elsewhere(_ family: IPAddress.Family) -> IPAddress {
        family == .v4 ? IPAddress("192.0.2.3")! : IPAddress("2001:db8::3")!
    }

    /// For the canary's own IPv4 address, naming zone 0: must leave the canary. It also takes any
    /// zone-0 entry with that reply source (UDP from 192.0.2.2 port 0): nothing real is.
    static let zoneZeroFlush = try! ConntrackFlushRequest(.replySource(canary(.v4).reply.source.address, port: 0, .udp), zone: 0)

    /// The trial's flushes: both sides, for `address`, port 0, UDP, in the canary's zone.
    static func flushes(toward address: IPAddress) -> [ConntrackFlushRequest] {
        [
            try! ConntrackFlushRequest(.originalDestination(address, port: 0, .udp), zone: zone),
            try! ConntrackFlushRequest(.replySource(address, port: 0, .udp), zone: zone),
        ]
    }
}

extension FlushCanary {
    /// The IPv4 trial's verdict, left for the rest of the boot (`BootScopedMemo`): a kernel does not
    /// change its comparisons until it reboots, and a one-shot purge should not walk the table four
    /// more times to learn it again (14 ms of a 77 ms purge of 10,000 connections, measured).
    public static var memo: BootScopedMemo { BootScopedMemo(name: "flush-canary") }
}

extension FlushCanary.Verdict {
    /// The memo's words for a verdict that holds until the next boot; nil for `.untried`, which a
    /// later process should try again.
    var memoText: String? {
        switch self {
        case .trusted: "trusted"
        case .refused: "refused"
        case .comparesWrongly(let what): "compares-wrongly \(what)"
        case .untried: nil
        }
    }

    init?(memoText text: String) {
        switch text {
        case "trusted": self = .trusted
        case "refused": self = .refused
        case _ where text.hasPrefix("compares-wrongly "): self = .comparesWrongly(String(text.dropFirst("compares-wrongly ".count)))
        default: return nil
        }
    }
}

/// IPCTNL_MSG_CT_NEW with NLM_F_CREATE | NLM_F_EXCL: makes one entry, failing with EEXIST if its tuple is taken.
struct ConntrackCreateRequest: NetlinkRequest {
    let family: IPAddress.Family
    let attributes: [UInt8]

    init(_ entry: ConntrackEntry, timeoutSeconds: UInt32) throws(SystemCallError) {
        family = entry.family
        attributes = try ConntrackCodec.createAttributes(for: entry, timeoutSeconds: timeoutSeconds)
    }

    var messageType: UInt16 { ConntrackMessageType.new }
    var flags: UInt16 { 0x1 | 0x4 | 0x200 | 0x400 }  // NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
    var netlinkOperation: NetlinkOperation { .conntrackCreate }

    func writePayload(into writer: inout NetlinkMessageWriter) {
        writeNetfilterHeader(family: family, into: &writer)
        writer.append(attributes)
    }
}

extension ConntrackTable {
    /// Tries the filtered flush on a canary of `family` in the calling thread's namespace; the
    /// canary is gone afterwards whatever happened.
    public func tryFlush(on family: IPAddress.Family) -> FlushCanary.Verdict {
        let canary = FlushCanary.canary(family)
        defer { _ = try? delete([canary]) }
        func make() -> FlushCanary.Verdict? {
            guard let request = try? ConntrackCreateRequest(canary, timeoutSeconds: FlushCanary.timeoutSeconds) else {
                return .untried("the canary entry could not be built")
            }
            var answer = try? exchange(request)
            if answer == .failed(.fileExists) {  // left by a trial that was cut short
                _ = try? delete([canary])
                answer = try? exchange(request)
            }
            return answer == .done
                ? nil : .untried("\(NetlinkOperation.conntrackCreate.rawValue): \(answer.map(String.init(describing:)) ?? "no answer")")
        }
        /// nil when each flush was done; the verdict a refusal or failure gives otherwise.
        func flushed(_ requests: [ConntrackFlushRequest]) -> FlushCanary.Verdict? {
            guard let answers = try? exchangeFlushes(requests) else { return .untried("the flush could not be sent") }
            if answers.contains(where: Self.isRefusal) { return .refused }
            if let other = answers.first(where: { $0 != .done }) {
                return .untried("\(NetlinkOperation.conntrackDelete.rawValue) (filtered flush): \(other)")
            }
            return nil
        }
        /// One step of the trial: the canary made, `requests` flushed, then whether its exact delete
        /// found it, against `kept`; nil when the kernel did as it should, else the verdict.
        func step(_ requests: [ConntrackFlushRequest], kept: Bool, otherwise wrongly: String) -> FlushCanary.Verdict? {
            if let failed = make() { return failed }
            if let failed = flushed(requests) { return failed }
            switch try? delete([canary]).first {
            case .done?: return kept ? nil : .comparesWrongly(wrongly)
            case .failed(.noSuchFileOrDirectory)?: return kept ? .comparesWrongly(wrongly) : nil
            default: return .untried("the canary's delete was not answered")
            }
        }
        let elsewhere = FlushCanary.flushes(toward: FlushCanary.elsewhere(family))
        if let verdict = step(elsewhere, kept: true, otherwise: "a flush for another address took the canary") { return verdict }
        // A purge's flush names zone 0: a kernel that read zone 0 as "every zone" (one version of the
        // zone filter did) would take the other zones' entries a purge must leave.
        if family == .v4,
            let verdict = step(
                [FlushCanary.zoneZeroFlush], kept: true, otherwise: "a flush naming zone 0 took the canary in zone \(FlushCanary.zone)")
        {
            return verdict
        }
        for (side, request) in zip(["original destination", "reply source"], FlushCanary.flushes(toward: canary.reply.source.address)) {
            if let verdict = step([request], kept: false, otherwise: "a flush for the canary's own address (\(side)) left it") {
                return verdict
            }
        }
        return .trusted
    }
}
