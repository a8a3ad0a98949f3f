import Conntrack
import NetworkAddress
import SockDiag

/// What a purge does with what the kernel's dumps returned, decided apart from doing it: which
/// sockets to destroy (by cookie), which ones the limit leaves for a later purge, which conntrack
/// entries to delete (by tuple, zone and id) and which filtered flushes to send. No kernel, no
/// clock, no /proc: every rule here is unit-tested without root. `Purger` runs the dumps, asks
/// the plan at each step, sends what it says and reports the kernel's answers. The plan comes in
/// steps because each dump depends on the answers to the step before it: the conntrack dump names
/// the sockets a NAT hid, and the entries go only once their sockets are gone.
struct PurgePlan: Sendable {
    /// From this many entries on one side of a destination, one filtered flush replaces the exact
    /// deletes: one walk of the table costs about what a few hundred exact deletes do.
    static let flushFrom = 256

    let matcher: DestinationMatcher
    /// A purge that changes the kernel (not a list, not a dry run).
    let acting: Bool
    let socketLimit: Int?
    let flushMode: Purger.ConntrackFlushMode
    let sparingOwnSockets: Bool
    /// What the kernel said of filtered flushes in this process: nil until asked, false once refused.
    let flushSupported: Bool?

    init(
        matcher: DestinationMatcher, acting: Bool, socketLimit: Int? = nil, flushMode: Purger.ConntrackFlushMode = .auto,
        sparingOwnSockets: Bool = false, flushSupported: Bool? = true
    ) {
        self.matcher = matcher
        self.acting = acting
        self.socketLimit = socketLimit
        self.flushMode = flushMode
        self.sparingOwnSockets = sparingOwnSockets
        self.flushSupported = flushSupported
    }

    /// The same plan after the kernel answered a flush (a refusal is remembered for the process).
    func knowing(flushSupported: Bool?) -> PurgePlan {
        PurgePlan(
            matcher: matcher, acting: acting, socketLimit: socketLimit, flushMode: flushMode, sparingOwnSockets: sparingOwnSockets,
            flushSupported: flushSupported)
    }

    // MARK: Sockets

    struct SocketChoice: Equatable {
        /// Destroyed now, in dump order.
        var destroy: [DiagnosedSocket] = []
        /// This process's own (the agent's probes): never destroyed, and their entries stay too.
        var own: [DiagnosedSocket] = []
        /// Beyond the limit: left for a later purge, with their entries (so their RST is still
        /// reverse-NATed when they go).
        var leftByLimit: [DiagnosedSocket] = []
    }

    /// A round of the direct dump: what matches and was not ended or refused by an earlier round (a
    /// refusal would only come again). The limit counts the sockets earlier rounds ended.
    /// `ownInodes` is read only when a candidate could be one of this process's sockets (it reads /proc).
    /// `servedElsewhere`: flows dialled to a destination that a DNAT sent elsewhere (`servedElsewhere(in:)`): kept.
    /// `listening`: the host's listening endpoints, when connections the destinations opened to it are spared.
    func directSockets(
        in dumped: [DiagnosedSocket], ended: Set<UInt64>, refused: Set<UInt64> = [], servedElsewhere: Set<Flow> = [],
        listening: [Endpoint] = [], ownInodes: () -> Set<UInt32>
    ) -> SocketChoice {
        let candidates = dumped.filter {
            matcher.matches($0) && !ended.contains($0.id.cookie) && (refused.isEmpty || !refused.contains($0.id.cookie))
                && (servedElsewhere.isEmpty || !servedElsewhere.contains(Flow($0)))
                && (listening.isEmpty || !Self.wasAccepted($0, listening: listening))
        }
        return choose(candidates, room: socketLimit.map { max(0, $0 - ended.count) }, ownInodes: ownInodes)
    }

    /// The dump toward the VIPs of flows a NAT sent to a destination: only the exact flows, in a
    /// reaped state, not already reported. The limit counts what the direct rounds ended (or would
    /// end), as they count it themselves: a refused or unconfirmed destroy ended nothing.
    func translatedSockets(
        in dumped: [DiagnosedSocket], translated: TranslatedFlows, reported: Set<UInt64>, countedByLimit: Int,
        ownInodes: () -> Set<UInt32>
    ) -> SocketChoice {
        let candidates = dumped.filter {
            translated.matches($0) && matcher.states.contains($0.state) && !reported.contains($0.id.cookie)
        }
        return choose(candidates, room: socketLimit.map { max(0, $0 - countedByLimit) }, ownInodes: ownInodes)
    }

    /// Its local end is where the host listens: the peer opened it (a port-less destination's own
    /// connections to this host's servers), not this host.
    static func wasAccepted(_ socket: DiagnosedSocket, listening: [Endpoint]) -> Bool {
        let local = socket.local.unmapped
        return listening.contains { (listener: Endpoint) -> Bool in
            let address = listener.unmapped.address
            return listener.port == local.port && (address == local.address || address == .v4(0) || address == .v6(high: 0, low: 0))
        }
    }

    private func choose(_ candidates: [DiagnosedSocket], room: Int?, ownInodes: () -> Set<UInt32>) -> SocketChoice {
        var choice = SocketChoice()
        var targets = candidates
        if sparingOwnSockets, !targets.isEmpty {
            let own = ownInodes()
            choice.own = targets.filter { own.contains($0.inode) }
            if !choice.own.isEmpty { targets.removeAll { own.contains($0.inode) } }
        }
        if let room, targets.count > room {
            choice.leftByLimit = Array(targets.dropFirst(room))
            targets = Array(targets.prefix(room))
        }
        choice.destroy = targets
        return choice
    }

    // MARK: Whether the dumps list the direct flows

    /// Whether the dumps may leave the direct flows (original destination an IPv4 host) unlisted, for
    /// one original-destination flush to take: decided before any socket is counted, so never where
    /// the flush could take what must stay (the sockets a limit leaves, the agent's own probes:
    /// those are known only once the walk is over). The agent always sets a limit, so this is the CLI's.
    var directFlowsMayGoUnlisted: Bool {
        acting && flushMode != .never && socketLimit == nil && !sparingOwnSockets && flushSupported != false
            && matcher.zones.flushZone != nil && ConntrackTable.flushesDirectFlows(of: matcher.destinations)
    }

    /// What the dumps do about the direct flows before the sockets are counted: list them (true),
    /// leave them to the flush (false), or wait for `listsDirectFlows(destroying:)` (nil).
    var listsDirectFlowsBeforeCounting: Bool? {
        guard directFlowsMayGoUnlisted else { return true }
        return flushMode == .always ? false : nil
    }

    /// Once the first round knows how many sockets it destroys: few ended sockets mean few direct
    /// flows, which the dumps list and exact deletes take.
    func listsDirectFlows(destroying count: Int) -> Bool {
        flushMode != .always && count < Self.flushFrom
    }

    // MARK: Conntrack entries

    /// An entry to delete and how it matched.
    typealias EntryTarget = (entry: ConntrackEntry, matchedBy: DestinationMatcher.ConntrackMatch)

    /// With a stuck rule only the entries of the sockets it condemned go, not the backend's others.
    var deletesOnlyEntriesOfReportedSockets: Bool { matcher.stuck != nil }

    /// The listed entries this purge deletes: those the matcher names, less what an earlier round
    /// deleted, the flows the limit left (their sockets still live), this process's own flows (a probe
    /// whose entry went would lose its NAT mapping mid-connection) and, with a stuck rule, every
    /// flow but the condemned sockets'.
    func entries(
        in listed: [ConntrackEntry], deleted: Set<ConntrackEntry.Identity>, leftByLimit: Set<Flow>, own: Set<Flow>,
        onlyFlows: Set<Flow>?
    ) -> [EntryTarget] {
        listed.compactMap { entry -> EntryTarget? in
            guard let matchedBy = matcher.match(entry), deleted.isEmpty || !deleted.contains(entry.identity) else { return nil }
            if leftByLimit.isEmpty && own.isEmpty && onlyFlows == nil { return (entry, matchedBy) }
            let flow = Flow(entry)
            guard !leftByLimit.contains(flow), !own.contains(flow), onlyFlows?.contains(flow) ?? true else { return nil }
            return (entry, matchedBy)
        }
    }

    /// The flows dialled to a destination that a DNAT sent to an address none of them names: another
    /// backend's, kept with their sockets, and no original-destination flush may be sent past them.
    func servedElsewhere(in listed: [ConntrackEntry]) -> Set<Flow> {
        Set(listed.filter(matcher.isServedElsewhere).map(Flow.init))
    }

    /// How many listed entries name the destinations in a zone the purge leaves.
    func inOtherZones(_ listed: [ConntrackEntry]) -> Int {
        if case .all = matcher.zones { return 0 }
        return listed.count { !matcher.zones.contains($0.zone) && matcher.matchInAnyZone($0) != nil }
    }

    /// Which sides of the IPv4 host destinations to flush for `targets`, or nil where no flush may be
    /// used at all: a stuck rule (single sockets), several zones (a flush names one, or all), sockets a limit left (a flush would take their
    /// entries), own flows among the matches (a flush names destinations, never flows, so it cannot
    /// leave a probe's entry out; a probe begun after the walk is not seen, but toward a destination
    /// found dead it is at most connecting, and its next SYN makes its entry again), the mode `never`,
    /// or a kernel that refused. Each side on its own count: every flush walks the host's whole table.
    /// `originalSideFlushed`: that flush already ran, before the dump listed the direct flows.
    /// `dialledElsewhere`: some flow dialled to a destination is served elsewhere; an original-
    /// destination flush would take its entry, so that side goes by exact deletes.
    func flushSides(
        for targets: [EntryTarget], originalSideFlushed: Bool, limitLeftSockets: Bool, ownFlows: Bool, dialledElsewhere: Bool = false
    ) -> Set<ConntrackTable.FlushSide>? {
        guard matcher.stuck == nil, matcher.zones.flushZone != nil, !limitLeftSockets, !ownFlows, flushMode != .never,
            flushSupported != false
        else { return nil }
        let named = namedByFlush
        var dialled = 0
        var translatedHere = 0
        for (entry, _) in targets {
            if named(entry.original.destination) { dialled += 1 } else if named(entry.reply.source) { translatedHere += 1 }
        }
        let always = flushMode == .always
        var sides = Set<ConntrackTable.FlushSide>()
        if !originalSideFlushed, !dialledElsewhere, always || dialled >= Self.flushFrom { sides.insert(.originalDestination) }
        if always || translatedHere >= Self.flushFrom { sides.insert(.replySource) }
        return sides
    }

    /// The flush requests for `sides`: one per IPv4 host destination, transport and side, naming the
    /// purge's zone (none when it takes every zone's).
    func flushRequests(_ sides: Set<ConntrackTable.FlushSide>) -> [ConntrackFlushRequest] {
        guard let zone = matcher.zones.flushZone else { return [] }
        return ConntrackTable.flushes(
            for: matcher.destinations.filter(ConntrackTable.isFlushable), transports: matcher.transports, sides: sides, zone: zone)
    }

    /// Splits `targets` into those the kernel's flushes of `flushed` took (reported from the listing
    /// made before them) and those left for exact deletes.
    func afterFlushes(_ targets: [EntryTarget], flushed: Set<ConntrackTable.FlushSide>) -> (byFlush: [EntryTarget], exact: [EntryTarget]) {
        guard !flushed.isEmpty else { return ([], targets) }
        let named = namedByFlush
        var byFlush: [EntryTarget] = []
        var exact: [EntryTarget] = []
        byFlush.reserveCapacity(targets.count)
        for target in targets {
            let isDialled = named(target.entry.original.destination)
            if flushed.contains(isDialled ? .originalDestination : .replySource) && (isDialled || named(target.entry.reply.source)) {
                byFlush.append(target)
            } else {
                exact.append(target)
            }
        }
        return (byFlush, exact)
    }

    /// What the original-destination flush made before the listing took, counted by the table's size
    /// before and after, less the translated entries the listing named on that side (the report
    /// lists those).
    func flushedUnlisted(before: Int, after: Int, listed: [ConntrackEntry]) -> Int {
        let named = namedByFlush
        let listedThere = listed.count { named($0.original.destination) && matcher.match($0) != nil }
        return max(0, before - after - listedThere)
    }

    /// Whether a flush of the destinations names an endpoint: only IPv4 hosts are ever flushed.
    private var namedByFlush: (Endpoint) -> Bool {
        let flushable = matcher.destinations.filter(ConntrackTable.isFlushable)
        return { endpoint in flushable.contains { $0.matches(address: endpoint.address, port: endpoint.port) } }
    }
}
