import Conntrack
import NetworkAddress
@testable import Reaper
import SockDiag
import Testing

/// The purge's decisions from what the dumps returned, without a kernel: what is destroyed, what the
/// limit leaves, which entries go one by one and which by a flush, and what of the agent's own stays.
@Suite struct PurgePlanTests {
    static let backend = endpoint("10.0.0.3", 6443)
    static let vip = endpoint("10.96.0.10", 443)
    static let live = endpoint("10.0.0.4", 6443)
    let matcher = DestinationMatcher(destinations: [try! Destination(parsing: "10.0.0.3:6443")], transports: [.tcp])

    static func endpoint(_ address: String, _ port: UInt16) -> Endpoint { Endpoint(address: IPAddress(address)!, port: port) }
    static func client(_ port: UInt16, _ address: String = "10.0.0.10") -> Endpoint { endpoint(address, port) }

    func socket(_ local: Endpoint, _ remote: Endpoint = Self.backend, cookie: UInt64, inode: UInt32 = 0, family: SocketFamily = .inet)
        -> DiagnosedSocket
    {
        DiagnosedSocket(
            family: family, transport: .tcp, state: .established, id: SocketID(source: local, destination: remote, cookie: cookie),
            inode: inode)
    }

    /// A direct flow (reply from where it was sent), or one a DNAT sent to `repliedBy`.
    func entry(_ source: Endpoint, _ destination: Endpoint = Self.backend, repliedBy replier: Endpoint? = nil, zone: UInt16 = 0)
        -> ConntrackEntry
    {
        let family: IPAddress.Family = if case .v6 = source.address { .v6 } else { .v4 }
        return ConntrackEntry(
            family: family, transport: .tcp, original: .init(source: source, destination: destination),
            reply: .init(source: replier ?? destination, destination: source), zone: zone, id: UInt32(source.port))
    }

    func clients(_ count: Int, from first: UInt16 = 40000) -> [Endpoint] { (0..<count).map { Self.client(first + UInt16($0)) } }

    func plan(
        acting: Bool = true, limit: Int? = nil, mode: Purger.ConntrackFlushMode = .auto, sparing: Bool = false,
        supported: Bool? = true, matcher: DestinationMatcher? = nil
    ) -> PurgePlan {
        PurgePlan(
            matcher: matcher ?? self.matcher, acting: acting, socketLimit: limit, flushMode: mode, sparingOwnSockets: sparing,
            flushSupported: supported)
    }

    // MARK: Sockets and the limit

    @Test func onlyMatchingSocketsNotYetEndedAreDestroyed() {
        let toBackend = socket(Self.client(40000), cookie: 1)
        let toLive = socket(Self.client(40001), Self.live, cookie: 2)
        let endedBefore = socket(Self.client(40002), cookie: 3)
        var listening = socket(Self.client(40003), cookie: 4)
        listening.state = .listen
        let choice = plan().directSockets(in: [toBackend, toLive, endedBefore, listening], ended: [3]) { [] }
        #expect(choice.destroy == [toBackend])
        #expect(choice.own.isEmpty && choice.leftByLimit.isEmpty)
    }

    @Test func theLimitLeavesTheRestForLaterCountingWhatEarlierRoundsEnded() {
        let sockets = clients(5).enumerated().map { socket($1, cookie: UInt64($0 + 10)) }
        let first = plan(limit: 3).directSockets(in: sockets, ended: []) { [] }
        #expect(first.destroy == Array(sockets.prefix(3)))
        #expect(first.leftByLimit == Array(sockets.suffix(2)))
        // A second round (a lost ack) that already ended 2: room for one more.
        let second = plan(limit: 3).directSockets(in: sockets, ended: [10, 11]) { [] }
        #expect(second.destroy == [sockets[2]])
        #expect(second.leftByLimit == [sockets[3], sockets[4]])
        let spent = plan(limit: 2).directSockets(in: sockets, ended: [10, 11, 12]) { [] }
        #expect(spent.destroy.isEmpty && spent.leftByLimit.count == 2)
    }

    @Test func theEntriesOfSocketsTheLimitLeftStayAndNoFlushIsSent() {
        let sockets = clients(300).enumerated().map { socket($1, cookie: UInt64($0 + 1)) }
        let plan = plan(limit: 10)
        let choice = plan.directSockets(in: sockets, ended: []) { [] }
        let left = Set(choice.leftByLimit.map(Flow.init))
        let targets = plan.entries(in: clients(300).map { entry($0) }, deleted: [], leftByLimit: left, own: [], onlyFlows: nil)
        #expect(targets.map(\.entry.original.source) == clients(10))
        #expect(plan.flushSides(for: targets, originalSideFlushed: false, limitLeftSockets: true, ownFlows: false) == nil)
        #expect(!plan.directFlowsMayGoUnlisted)
    }

    // MARK: The agent's own connections

    @Test func ownSocketsAreSparedBeforeTheLimitCountsAndProcIsReadOnlyWhenNeeded() {
        let probe = socket(Self.client(50000), cookie: 1, inode: 77)
        let others = clients(3).enumerated().map { socket($1, cookie: UInt64($0 + 2), inode: UInt32(100 + $0)) }
        let choice = plan(limit: 3, sparing: true).directSockets(in: [probe] + others, ended: []) { [77] }
        #expect(choice.own == [probe])
        #expect(choice.destroy == others)
        #expect(choice.leftByLimit.isEmpty)
        // Not sparing: a probe is a socket like any other, and /proc is never read.
        let notSparing = plan().directSockets(in: [probe]) {
            Issue.record("read own sockets without sparing them"); return []
        }
        #expect(notSparing.destroy == [probe])
        _ = plan(sparing: true).directSockets(in: [socket(Self.client(1), Self.live, cookie: 9)]) {
            Issue.record("read own sockets with no candidate")
            return []
        }
    }

    @Test func anOwnSocketsEntryStaysWhileTheOthersGo() {
        let probe = socket(Self.client(50000), cookie: 1, inode: 77)
        let plan = plan(sparing: true)
        let own = Set(plan.directSockets(in: [probe]) { [77] }.own.map(Flow.init))
        let listed = [entry(Self.client(50000)), entry(Self.client(40000)), entry(Self.client(40001))]
        let targets = plan.entries(in: listed, deleted: [], leftByLimit: [], own: own, onlyFlows: nil)
        #expect(targets.map(\.entry.original.source) == [Self.client(40000), Self.client(40001)])
    }

    @Test func aDualStackProbesEntryIsKnownByItsUnmappedFlow() {
        guard case .v4(let value) = Self.client(50000).address, case .v4(let backend) = Self.backend.address else { return }
        let mapped = socket(
            Endpoint(address: .v4Mapped(value), port: 50000), Endpoint(address: .v4Mapped(backend), port: 6443), cookie: 1, inode: 5,
            family: .inet6)
        let plan = plan(sparing: true)
        let own = Set(plan.directSockets(in: [mapped]) { [5] }.own.map(Flow.init))
        #expect(plan.entries(in: [entry(Self.client(50000))], deleted: [], leftByLimit: [], own: own, onlyFlows: nil).isEmpty)
    }

    @Test func noFlushIsSentWhileAnOwnConnectionIsAmongTheMatches() {
        let plan = plan(sparing: true)
        let targets = plan.entries(in: clients(400).map { entry($0) }, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(
            plan.flushSides(for: targets, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == [.originalDestination])
        #expect(plan.flushSides(for: targets, originalSideFlushed: false, limitLeftSockets: false, ownFlows: true) == nil)
        // Nor does a purge that spares its own sockets let the direct flows go unlisted to a flush
        // decided before the walk has seen them.
        #expect(!plan.directFlowsMayGoUnlisted)
        #expect(plan.listsDirectFlowsBeforeCounting == true)
    }

    @Test func anOwnConnectionThroughAVIPIsSparedWithItsEntry() {
        let probe = socket(Self.client(50000), Self.vip, cookie: 1, inode: 77)
        let other = socket(Self.client(40000), Self.vip, cookie: 2, inode: 78)
        let listed = [
            entry(Self.client(50000), Self.vip, repliedBy: Self.backend), entry(Self.client(40000), Self.vip, repliedBy: Self.backend),
        ]
        let translated = TranslatedFlows(listed, matcher: matcher)
        let plan = plan(sparing: true)
        let choice = plan.translatedSockets(in: [probe, other], translated: translated, reported: [], countedByLimit: 0) { [77] }
        #expect(choice.own == [probe] && choice.destroy == [other])
        let targets = plan.entries(in: listed, deleted: [], leftByLimit: [], own: Set(choice.own.map(Flow.init)), onlyFlows: nil)
        #expect(targets.map(\.entry.original.source) == [Self.client(40000)])
        #expect(targets.map(\.matchedBy) == [.replySource])
    }

    // MARK: The flush threshold

    @Test func fromTwoHundredFiftySixEntriesOnASideOneFlushTakesThem() {
        let plan = plan()
        let below = plan.entries(in: clients(255).map { entry($0) }, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(plan.flushSides(for: below, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == [])
        let at = plan.entries(in: clients(256).map { entry($0) }, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(plan.flushSides(for: at, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == [.originalDestination])
        #expect(plan.flushRequests([.originalDestination]).count == 1)
        let split = plan.afterFlushes(at, flushed: [.originalDestination])
        #expect(split.byFlush.count == 256 && split.exact.isEmpty)
        // Refused by the kernel: nothing is known deleted, every entry goes by its exact delete.
        #expect(plan.afterFlushes(at, flushed: []).exact.count == 256)
    }

    @Test func theModeAndTheKernelDecideWhetherAFlushIsUsedAtAll() {
        let few = plan().entries(in: [entry(Self.client(1))], deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        let many = plan().entries(in: clients(300).map { entry($0) }, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(
            plan(mode: .always).flushSides(for: few, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false)
                == [.originalDestination, .replySource])
        #expect(plan(mode: .never).flushSides(for: many, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == nil)
        #expect(plan(supported: false).flushSides(for: many, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == nil)
        // Already flushed before the listing: not again.
        #expect(plan().flushSides(for: many, originalSideFlushed: true, limitLeftSockets: false, ownFlows: false) == [])
        let stuck = DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], stuck: StuckRule(afterMilliseconds: 1000))
        #expect(plan(matcher: stuck).flushSides(for: many, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == nil)
    }

    @Test func theDirectFlowsGoUnlistedOnlyForALargeActingPurgeWithoutLimit() {
        #expect(plan().directFlowsMayGoUnlisted)
        #expect(plan().listsDirectFlowsBeforeCounting == nil)
        #expect(plan().listsDirectFlows(destroying: 255))
        #expect(!plan().listsDirectFlows(destroying: 256))
        #expect(plan(mode: .always).listsDirectFlowsBeforeCounting == false)
        #expect(plan(mode: .never).listsDirectFlowsBeforeCounting == true)
        #expect(plan(supported: false).listsDirectFlowsBeforeCounting == true)
        // An unknown kernel is asked by the flush itself (a refusal lists them after all).
        #expect(plan(supported: nil).directFlowsMayGoUnlisted)
        let prefix = DestinationMatcher(destinations: [try! Destination(parsing: "10.0.0.0/24:6443")], transports: [.tcp])
        #expect(!plan(matcher: prefix).directFlowsMayGoUnlisted)
    }

    @Test func theFlushCountsWhatItTookUnlistedLessTheTranslatedEntriesListedOnThatSide() {
        // Dialled to the backend, translated to another of its ports: still the backend's, listed on that side.
        let dialledTranslated = entry(Self.client(1), Self.backend, repliedBy: Self.endpoint("10.0.0.3", 8443))
        let translatedHere = entry(Self.client(2), Self.vip, repliedBy: Self.backend)
        #expect(plan().flushedUnlisted(before: 1000, after: 600, listed: [dialledTranslated, translatedHere]) == 399)
        #expect(plan().flushedUnlisted(before: 10, after: 12, listed: []) == 0)
    }

    // MARK: Translated flows

    @Test func translatedFlowsAreCountedAndFlushedByTheirReplySource() {
        let plan = plan()
        let translated = clients(256).map { entry($0, Self.vip, repliedBy: Self.backend) }
        let direct = clients(3, from: 50000).map { entry($0) }
        let targets = plan.entries(in: translated + direct, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(targets.count { $0.matchedBy == .replySource } == 256)
        #expect(plan.flushSides(for: targets, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == [.replySource])
        let split = plan.afterFlushes(targets, flushed: [.replySource])
        #expect(split.byFlush.count == 256)
        #expect(split.exact.map(\.entry.original.source) == clients(3, from: 50000))
    }

    @Test func theTranslatedSocketsAreTheExactFlowsWithinTheLimitLeft() {
        let listed = clients(3).map { entry($0, Self.vip, repliedBy: Self.backend) }
        let translated = TranslatedFlows(listed, matcher: matcher)
        let sockets = clients(3).enumerated().map { socket($1, Self.vip, cookie: UInt64($0 + 1)) }
        let toLive = socket(Self.client(41000), Self.vip, cookie: 9)  // the same VIP, NAT'd to a live backend
        let choice = plan(limit: 5).translatedSockets(
            in: sockets + [toLive], translated: translated, reported: [1], countedByLimit: 3
        ) { [] }
        #expect(choice.destroy == [sockets[1], sockets[2]])
        #expect(choice.leftByLimit.isEmpty)
        let tight = plan(limit: 4).translatedSockets(in: sockets, translated: translated, reported: [], countedByLimit: 3) { [] }
        #expect(tight.destroy == [sockets[0]] && tight.leftByLimit == [sockets[1], sockets[2]])
    }

    // MARK: IPv6, zones, earlier rounds, stuck rules

    @Test func anIPv6DestinationIsNeverFlushed() {
        let v6 = DestinationMatcher(destinations: [try! Destination(parsing: "[fd00::3]:6443")], transports: [.tcp])
        let plan = plan(matcher: v6)
        let listed = (0..<300).map { entry(Self.endpoint("fd00::10", UInt16(40000 + $0)), Self.endpoint("fd00::3", 6443)) }
        let targets = plan.entries(in: listed, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(targets.count == 300)
        #expect(plan.flushSides(for: targets, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == [])
        #expect(self.plan(mode: .always, matcher: v6).flushRequests([.originalDestination, .replySource]).isEmpty)
        #expect(self.plan(mode: .always, matcher: v6).afterFlushes(targets, flushed: [.originalDestination]).exact.count == 300)
        #expect(!plan.directFlowsMayGoUnlisted)
    }

    @Test func anEntryDeletedByAnEarlierRoundIsNotATargetAgainInAnyZone() {
        let first = entry(Self.client(1))
        let otherZone = entry(Self.client(1), zone: 7)
        let everyZone = DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], zones: .all)
        let targets = plan(matcher: everyZone).entries(
            in: [first, otherZone], deleted: [first.identity], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(targets.map(\.entry) == [otherZone])
    }

    /// Dialled to the dead 10.0.0.3 but DNAT'd to the live 10.0.0.4 (a NodePort on a dead node's
    /// address, served by a local pod): 10.0.0.4's flow. Its socket and entry stay, and no
    /// original-destination flush is sent past it; a VIP's flow answered by 10.0.0.3 is still taken.
    @Test func aFlowDialledToTheDestinationButServedElsewhereIsKept() {
        let portless = DestinationMatcher(destinations: [try! Destination(parsing: "10.0.0.3")], transports: [.tcp])
        let plan = plan(mode: .always, matcher: portless)
        let servedByLive = entry(Self.client(40001), repliedBy: Self.live)
        let direct = entry(Self.client(40002))
        let viaVIP = entry(Self.client(40003), Self.vip, repliedBy: Self.backend)
        let otherPort = entry(Self.client(40004), repliedBy: Self.endpoint("10.0.0.3", 8443))
        let listed = [servedByLive, direct, viaVIP, otherPort]
        #expect(plan.servedElsewhere(in: listed) == [Flow(servedByLive)])
        let targets = plan.entries(in: listed, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(targets.map(\.entry) == [direct, viaVIP, otherPort])
        let sockets = [socket(Self.client(40001), cookie: 1), socket(Self.client(40002), cookie: 2)]
        let choice = plan.directSockets(in: sockets, ended: [], servedElsewhere: plan.servedElsewhere(in: listed)) { [] }
        #expect(choice.destroy.map(\.id.cookie) == [2])
        let sides = plan.flushSides(
            for: targets, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false, dialledElsewhere: true)
        #expect(sides == [.replySource])
    }

    /// A port-less destination names a host, and so also what it opened to this one: a socket whose
    /// local end is where this host listens (on its address, or any address of either family) was
    /// accepted here and is spared when listeners are given; an outgoing one on an ephemeral port is not.
    @Test func connectionsTheDestinationOpenedToThisHostAreSparedWhenListenersAreGiven() {
        let portless = DestinationMatcher(destinations: [try! Destination(parsing: "10.0.0.3")], transports: [.tcp])
        let accepted = socket(Self.endpoint("10.0.0.10", 443), Self.endpoint("10.0.0.3", 51000), cookie: 1)
        let acceptedOnAny = socket(Self.endpoint("::ffff:10.0.0.10", 8443), Self.endpoint("::ffff:10.0.0.3", 51001), cookie: 2)
        let outgoing = socket(Self.client(40000), Self.endpoint("10.0.0.3", 443), cookie: 3)
        let listening = [Self.endpoint("10.0.0.10", 443), Self.endpoint("::", 8443)]
        let spared = plan(matcher: portless).directSockets(in: [accepted, acceptedOnAny, outgoing], ended: [], listening: listening) { [] }
        #expect(spared.destroy.map(\.id.cookie) == [3])
        let asked = plan(matcher: portless).directSockets(in: [accepted, acceptedOnAny, outgoing], ended: []) { [] }
        #expect(asked.destroy.map(\.id.cookie) == [1, 2, 3])
    }

    /// Zone 7 may be another network's 10.0.0.3: its entries go only when asked, and are counted.
    @Test func otherZonesAreLeftUnlessAskedAndCounted() {
        let listed = clients(3).map { entry($0) } + clients(2, from: 41000).map { entry($0, zone: 7) }
        let byDefault = plan()
        #expect(byDefault.entries(in: listed, deleted: [], leftByLimit: [], own: [], onlyFlows: nil).count == 3)
        #expect(byDefault.inOtherZones(listed) == 2)
        let seven = plan(matcher: DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], zones: .only([7])))
        #expect(seven.entries(in: listed, deleted: [], leftByLimit: [], own: [], onlyFlows: nil).map(\.entry.zone) == [7, 7])
        #expect(seven.inOtherZones(listed) == 3)
        let every = plan(matcher: DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], zones: .all))
        #expect(every.entries(in: listed, deleted: [], leftByLimit: [], own: [], onlyFlows: nil).count == 5)
        #expect(every.inOtherZones(listed) == 0)
    }

    /// A flush names the purge's one zone (zone 0 by default), none with every zone; two zones cannot
    /// be one flush, so they go by exact deletes, and their direct flows are listed.
    @Test func aFlushNamesItsZoneAndTwoZonesAreNeverFlushed() {
        #expect(plan(mode: .always).flushRequests([.originalDestination]).map(\.zone) == [0])
        let every = plan(mode: .always, matcher: DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], zones: .all))
        #expect(every.flushRequests([.originalDestination, .replySource]).map(\.zone) == [nil, nil])
        let two = plan(
            mode: .always, matcher: DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], zones: .only([0, 7])))
        let targets = two.entries(in: clients(300).map { entry($0) }, deleted: [], leftByLimit: [], own: [], onlyFlows: nil)
        #expect(two.flushSides(for: targets, originalSideFlushed: false, limitLeftSockets: false, ownFlows: false) == nil)
        #expect(two.flushRequests([.originalDestination]).isEmpty)
        #expect(!two.directFlowsMayGoUnlisted && plan(mode: .always).directFlowsMayGoUnlisted)
    }

    @Test func aStuckRuleDeletesOnlyTheCondemnedSocketsEntries() {
        let stuck = DestinationMatcher(destinations: matcher.destinations, transports: [.tcp], stuck: StuckRule(afterMilliseconds: 1000))
        let plan = plan(matcher: stuck)
        #expect(plan.deletesOnlyEntriesOfReportedSockets)
        let condemned = Set([Flow(socket(Self.client(40001), cookie: 1))])
        let targets = plan.entries(in: clients(3).map { entry($0) }, deleted: [], leftByLimit: [], own: [], onlyFlows: condemned)
        #expect(targets.map(\.entry.original.source) == [Self.client(40001)])
    }

    // MARK: Dry run

    @Test func aDryRunPlansTheSameTargetsAndNeverFlushesUnlisted() {
        let dry = plan(acting: false, sparing: true)
        #expect(!dry.directFlowsMayGoUnlisted)
        #expect(dry.listsDirectFlowsBeforeCounting == true)
        let probe = socket(Self.client(50000), cookie: 1, inode: 77)
        let other = socket(Self.client(40000), cookie: 2, inode: 78)
        let choice = dry.directSockets(in: [probe, other]) { [77] }
        #expect(choice.destroy == [other] && choice.own == [probe])
        let targets = dry.entries(
            in: [entry(Self.client(50000)), entry(Self.client(40000))], deleted: [], leftByLimit: [],
            own: Set(choice.own.map(Flow.init)), onlyFlows: nil)
        #expect(targets.map(\.entry.original.source) == [Self.client(40000)])
    }

    /// What a pass ended, for the budget: each socket once with its own entry; a forwarded flow's
    /// entry deleted with no socket here counts as one more; an entry of a connection already closing
    /// (TIME_WAIT) ends nothing and counts for nothing.
    @Test func flowsEndedByTheirEntryAloneAreForwardedOnesStillOpen() {
        var report = PurgeReport()
        let local = Self.client(40000)
        report.sockets = [.init(socket: socket(local, cookie: 1), outcome: .ended)]
        var closing = entry(Self.client(40002))
        closing.tcpState = 7
        var established = entry(Self.client(40001, "10.9.0.5"))
        established.tcpState = 3
        report.conntrack = [entry(local), established, closing].map {
            PurgeReport.ConntrackResult(entry: $0, matchedBy: .originalDestination, outcome: .ended)
        }
        #expect(report.socketsEnded == 1 && report.conntrackDeleted == 3)
        #expect(report.flowsEndedByEntryAlone == 1)
    }
}

extension PurgePlan {
    /// A first round: nothing ended yet.
    fileprivate func directSockets(in dumped: [DiagnosedSocket], ownInodes: () -> Set<UInt32>) -> SocketChoice {
        directSockets(in: dumped, ended: [], ownInodes: ownInodes)
    }

}
