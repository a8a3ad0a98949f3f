import Netlink
import NetworkAddress
import OS
import Synchronization

/// The conntrack table of one network namespace, through ctnetlink (needs CAP_NET_ADMIN even to read).
public final class ConntrackTable {
    private let dumpSocket: NetlinkSocket
    /// The reply-source dumps run beside the original-destination ones: each walks the whole
    /// conntrack hash of the host (every namespace's entries, every bucket), matches or not.
    private let dumpSocket2: NetlinkSocket
    private let deleteSocket: NetlinkSocket

    /// Up to this many single-address destinations are filtered in the kernel, two dumps each;
    /// beyond it one unfiltered dump per family is cheaper.
    static let kernelFilteredDestinationLimit = 16

    public init() throws(SystemCallError) {
        dumpSocket = try NetlinkSocket(bus: .netfilter)
        dumpSocket2 = try NetlinkSocket(bus: .netfilter)
        deleteSocket = try NetlinkSocket(bus: .netfilter)
        for socket in [dumpSocket, dumpSocket2, deleteSocket] { try socket.setReceiveTimeout(milliseconds: 10_000) }
        try deleteSocket.setReceiveBufferSize(16 << 20)
        try? deleteSocket.capAcknowledgements()
    }

    public struct Dump: Sendable {
        /// Candidates: kernels before 5.8 ignore the filter, so callers re-check every entry.
        public var entries: [ConntrackEntry] = []
        public var interrupted = false
        public var restarts = 0
        public var redone = 0

        /// Both dumps' entries, each once; either run's troubles.
        public func merged(with other: Dump) -> Dump {
            var merged = self
            var seen = Set(entries.map(\.identity))
            merged.entries += other.entries.filter { seen.insert($0.identity).inserted }
            merged.interrupted = interrupted || other.interrupted
            merged.restarts += other.restarts
            merged.redone += other.redone
            return merged
        }
    }

    /// The dumps that can hold an entry whose original destination or reply source is in `destinations`.
    /// Without `directFlows`, only the entries a DNAT translated (a purge that flushes the direct
    /// ones unlisted); a destination the kernel cannot filter on still gets every entry.
    public static func requests(
        for destinations: [Destination], transports: Set<TransportProtocol>, directFlows: Bool = true,
        statusNamesTranslations: Bool = true
    ) -> [ConntrackDumpRequest] {
        guard !destinations.isEmpty, !transports.isEmpty else { return [] }
        let exact = destinations.allSatisfy { $0.prefix?.isSingleHost == true }
        guard exact, destinations.count <= kernelFilteredDestinationLimit else {
            let families = Set(destinations.map { $0.prefix?.address.family }).flatMap {
                $0.map { [$0] } ?? [.v4, .v6]
            }
            return Set(families).sorted { $0 == .v4 && $1 == .v6 }.map { ConntrackDumpRequest(family: $0) }
        }
        var requests: [ConntrackDumpRequest] = []
        for destination in destinations {
            let address = destination.prefix!.address
            for transport in TransportProtocol.allCases where transports.contains(transport) {
                requests.append(
                    ConntrackDumpRequest(
                        family: address.family, filter: .originalDestination(address, port: destination.port, transport),
                        translatedOnly: statusNamesTranslations))
                requests.append(
                    ConntrackDumpRequest(
                        family: address.family, filter: .replySource(address, port: destination.port, transport),
                        translatedOnly: !directFlows && statusNamesTranslations))
            }
        }
        return requests
    }

    /// `sideBySide`: the reply-source dumps on a second thread, so one purge waits for one walk of
    /// the table, not two. Not for a walk over every namespace, whose purges already keep both
    /// cores busy: there a thread per namespace costs more than it saves.
    ///
    /// `directFlows` is asked once, when the first reply-source dump is due (it may wait for the
    /// caller's socket count): false leaves the direct flows' entries out (a flush takes them).
    /// `dialledSide` hears the original-destination dumps' entries as soon as they are in, before the
    /// reply-source dumps end (the caller may be waiting for them to spare what a DNAT sent elsewhere).
    public func entries(
        for destinations: [Destination], transports: Set<TransportProtocol>, sideBySide: Bool = false,
        directFlows: @escaping @Sendable () -> Bool = { true }, dialledSide: (Dump) -> Void = { _ in }
    ) throws(SystemCallError) -> Dump {
        // Each dump walks every bucket of the host's hash, found or not (8-10 ms at 262,144 buckets,
        // four per purge): a namespace whose table is empty, as a pod's without NAT rules is, has
        // nothing to walk for. The count includes entries not yet confirmed, so 0 hides nothing a
        // dump at this instant would have listed.
        if (try? entryCount()) == 0 {
            dialledSide(Dump())
            return Dump()
        }
        let status = Self.statusNamesTranslations()
        let choices = zip(
            Self.requests(for: destinations, transports: transports, statusNamesTranslations: status),
            Self.requests(for: destinations, transports: transports, directFlows: false, statusNamesTranslations: status)
        ).map { DumpChoice(listing: $0, translatedOnly: $1) }
        let replySide = choices.filter(\.isReplySide)
        guard sideBySide, !replySide.isEmpty, replySide.count < choices.count else {
            let dialled = try Self.dump(choices.filter { !$0.isReplySide }, on: dumpSocket, directFlows: directFlows)
            dialledSide(dialled)
            return try dialled.merged(with: Self.dump(replySide, on: dumpSocket, directFlows: directFlows))
        }
        let socket2 = dumpSocket2
        let background = BackgroundWork { () throws(SystemCallError) -> Dump in
            try Self.dump(replySide, on: socket2, directFlows: directFlows)
        }
        let first = Result { () throws(SystemCallError) -> Dump in
            try Self.dump(choices.filter { !$0.isReplySide }, on: dumpSocket, directFlows: directFlows)
        }
        if case .success(let dialled) = first { dialledSide(dialled) }
        let second = try background.wait()
        // A direct flow's entry is in both halves (its reply source is its original destination).
        return try first.get().merged(with: second)
    }

    /// One dump as it lists every entry, and as it asks for translated ones only.
    private struct DumpChoice {
        let listing: ConntrackDumpRequest
        let translatedOnly: ConntrackDumpRequest
        var isReplySide: Bool { if case .replySource? = listing.filter { true } else { false } }
    }

    /// IPVS with `net.ipv4.vs.conntrack = 1` (kube-proxy's IPVS mode sets it) rewrites an entry's
    /// reply tuple without IPS_DST_NAT: there the status cannot tell a translated entry from a
    /// direct one, and the dumps compare tuples in user space instead. Read in the calling thread's
    /// namespace.
    static func statusNamesTranslations() -> Bool {
        guard let setting = FileStatus.readText("/proc/sys/net/ipv4/vs/conntrack") else { return true }  // no IPVS here
        return setting.first == "0"
    }

    private static func dump(
        _ choices: [DumpChoice], on socket: NetlinkSocket, directFlows: () -> Bool
    ) throws(SystemCallError) -> Dump {
        var dump = Dump()
        var seen = Set<ConntrackEntry.Identity>()
        var listingDirect: Bool?
        for choice in choices {
            // An original-destination dump never needs a direct entry: the reply-source dump (or a
            // flush) has it. A kernel before 5.15 ignores CTA_STATUS and sends them anyway.
            var request = choice.listing
            var skipDirect = !choice.isReplySide && request.filter != nil
            if choice.isReplySide {
                let wanted = listingDirect ?? directFlows()
                listingDirect = wanted
                if !wanted { (request, skipDirect) = (choice.translatedOnly, true) }
            }
            let outcome = try socket.dump(request) { message in
                guard message.type == ConntrackMessageType.new,
                    !(skipDirect && ConntrackCodec.repliedByItsDestination(message)),
                    let entry = ConntrackCodec.entry(from: message),
                    seen.insert(entry.identity).inserted
                else { return }
                dump.entries.append(entry)
            }
            dump.interrupted = dump.interrupted || outcome.interrupted
            dump.restarts += outcome.restarts
            dump.redone += outcome.redone
        }
        return dump
    }

    /// How many entries the namespace's table holds now; nil when the kernel does not say.
    public func entryCount() throws(SystemCallError) -> Int? {
        guard let message = try dumpSocket.fetch(ConntrackStatisticsRequest()), message.payload.count >= 4 else { return nil }
        let attributes = NetlinkAttributes(message.payload.dropFirst(4))
        return attributes[ConntrackStatisticsAttribute.entries]?.reader.networkOrder(UInt32.self, at: 0).map(Int.init)
    }

    /// Deletes each entry, batched. ENOENT means already gone (timed out or deleted meanwhile).
    /// An entry whose delete cannot be built (no tuple) is never sent: its acknowledgement is EINVAL.
    public func delete(_ entries: [ConntrackEntry], batchSize: Int = 1024) throws(SystemCallError) -> [Acknowledgement] {
        var results = [Acknowledgement](repeating: .failed(.invalidArgument), count: entries.count)
        var requests: [ConntrackDeleteRequest] = []
        var positions: [Int] = []
        for (index, entry) in entries.enumerated() {
            guard let request = try? ConntrackDeleteRequest(entry: entry) else { continue }
            requests.append(request)
            positions.append(index)
        }
        let acknowledgements = try deleteSocket.exchangeAcknowledged(requests, batchSize: batchSize)
        for (position, acknowledgement) in zip(positions, acknowledgements) { results[position] = acknowledgement }
        return results
    }

    // MARK: - Filtered flush

    /// Whether the filtered flush may be used (Linux 6.12+, and it compared right on the canary),
    /// learnt once per process by `verifyFlush`, or by a flush the kernel refused. nil: not known yet.
    public static let flushSupported = Mutex<Bool?>(nil)
    /// What the IPv4 canary trial found (`FlushCanary`), for `check` and the agent's start line.
    public static let flushVerdict = Mutex<FlushCanary.Verdict?>(nil)

    /// Which side of an entry a flush compares with the destination.
    public enum FlushSide: Sendable, Hashable, CaseIterable {
        case originalDestination, replySource
    }

    /// The flushes that delete what `destinations` name in the kernel: for each IPv4 host
    /// destination, per transport, one per side asked. Other destinations (prefixes, any address,
    /// IPv6) get none: their entries are deleted one by one.
    /// `zone`: the one zone each flush compares (CTA_ZONE), nil for every zone.
    public static func flushes(
        for destinations: [Destination], transports: Set<TransportProtocol>, sides: Set<FlushSide> = Set(FlushSide.allCases),
        zone: UInt16? = nil
    ) -> [ConntrackFlushRequest] {
        var requests: [ConntrackFlushRequest] = []
        for destination in destinations where isFlushable(destination) {
            let address = destination.prefix!.address
            for transport in TransportProtocol.allCases where transports.contains(transport) {
                for side in FlushSide.allCases where sides.contains(side) {
                    let filter: ConntrackFilter =
                        switch side {
                        case .originalDestination: .originalDestination(address, port: destination.port, transport)
                        case .replySource: .replySource(address, port: destination.port, transport)
                        }
                    if let request = try? ConntrackFlushRequest(filter, zone: zone) { requests.append(request) }
                }
            }
        }
        return requests
    }

    public static func isFlushable(_ destination: Destination) -> Bool {
        destination.prefix.map { $0.isSingleHost && $0.address.family == .v4 } ?? false
    }

    /// Whether a flush can take every direct flow toward `destinations` while the dumps name only
    /// the translated ones: each is a flushable host, and few enough to be filtered in the kernel.
    public static func flushesDirectFlows(of destinations: [Destination]) -> Bool {
        !destinations.isEmpty && destinations.count <= kernelFilteredDestinationLimit && destinations.allSatisfy(isFlushable)
    }

    /// Sends the flushes; each acknowledgement says whether the kernel did it. A refusal (EINVAL,
    /// EOPNOTSUPP: a kernel without the feature) deletes nothing and is remembered for the process.
    /// Only a canary trial (`verifyFlush`) makes the flush trusted.
    public func flush(_ requests: [ConntrackFlushRequest]) throws(SystemCallError) -> [Acknowledgement] {
        let acknowledgements = try exchangeFlushes(requests)
        if acknowledgements.contains(where: Self.isRefusal) { Self.flushSupported.withLock { $0 = false } }
        return acknowledgements
    }

    func exchangeFlushes(_ requests: [ConntrackFlushRequest]) throws(SystemCallError) -> [Acknowledgement] {
        guard !requests.isEmpty else { return [] }
        return try deleteSocket.exchangeAcknowledged(requests, batchSize: requests.count)
    }

    func exchange(_ request: some NetlinkRequest) throws(SystemCallError) -> Acknowledgement {
        try deleteSocket.exchangeAcknowledged([request])[0]
    }

    static func isRefusal(_ acknowledgement: Acknowledgement) -> Bool {
        acknowledgement == .failed(.invalidArgument) || acknowledgement == .failed(.notSupported)
    }

    /// How `verifyFlush` learns the verdict.
    public enum FlushTrial: Sendable {
        /// From what this process or an earlier one of this boot learnt (`FlushCanary.memo`), tried
        /// only when neither knows: a one-shot purge.
        case unlessKnown
        /// Tried now whatever is known, and left for later processes: `check` and the agent's start,
        /// which show the kernel's answer of the moment.
        case now
    }

    /// Whether to flush: the IPv4 canary trial's verdict, learnt on the first call of the process
    /// (tried in the calling thread's namespace, or recalled from this boot) and kept.
    @discardableResult
    public func verifyFlush(_ trial: FlushTrial = .unlessKnown) -> Bool {
        if trial == .unlessKnown, let known = Self.flushSupported.withLock({ $0 }) { return known }
        let memo = FlushCanary.memo
        let verdict: FlushCanary.Verdict
        if trial == .unlessKnown, let recalled = memo.recall().flatMap(FlushCanary.Verdict.init(memoText:)) {
            verdict = recalled
        } else {
            verdict = tryFlush(on: .v4)
            if let text = verdict.memoText { memo.remember(text) }
        }
        Self.flushVerdict.withLock { $0 = verdict }
        let trusted = verdict == .trusted
        Self.flushSupported.withLock { $0 = trusted }
        return trusted
    }
}
