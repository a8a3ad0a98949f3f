import Conntrack
import Netlink
import NetworkAddress
import OS
@testable import Reaper
import SockDiag
import Testing

/// What the purge executor does with the kernel's answers, against a fake kernel (`FakeKernel.swift`):
/// its rounds, what it spares, how it finds NAT'd sockets, and when its entries go by flush or one
/// by one. Each test looks at what is left in the fake tables as well as at the report.
@Suite struct PurgerTests {
    static let backend = endpoint("10.0.0.3", 6443)
    static let live = endpoint("10.0.0.4", 6443)
    static let vip = endpoint("10.96.0.10", 443)
    let matcher = DestinationMatcher(
        destinations: [Destination(address: Self.backend.address, port: Self.backend.port)], transports: [.tcp])

    static func endpoint(_ address: String, _ port: UInt16) -> Endpoint { Endpoint(address: IPAddress(address)!, port: port) }
    static func client(_ port: UInt16) -> Endpoint { endpoint("10.0.0.10", port) }

    /// A socket from the client's `port`; its cookie is the port unless told.
    func socket(
        _ port: UInt16, to remote: Endpoint = Self.backend, cookie: UInt64? = nil, inode: UInt32 = 0, state: SocketState = .established
    ) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: .tcp, state: state,
            id: SocketID(source: Self.client(port), destination: remote, cookie: cookie ?? UInt64(port)), inode: inode)
    }

    /// The entry of the flow from the client's `port`: direct, or one a DNAT sent to `replier`.
    func entry(_ port: UInt16, to destination: Endpoint = Self.backend, repliedBy replier: Endpoint? = nil) -> ConntrackEntry {
        ConntrackEntry(
            family: .v4, transport: .tcp, original: .init(source: Self.client(port), destination: destination),
            reply: .init(source: replier ?? destination, destination: Self.client(port)), id: UInt32(port))
    }

    func ports(_ entries: [ConntrackEntry]) -> [UInt16] { entries.map(\.original.source.port).sorted() }

    func options(_ change: (inout Purger.Options) -> Void = { _ in }) -> Purger.Options {
        var options = Purger.Options()
        change(&options)
        return options
    }

    // MARK: Socket rounds

    @Test func aDestroyWhoseAckWasLostCountsAsEndedOnceItsSocketIsGoneFromTheNextDump() {
        let sockets = FakeSocketTable([socket(40000), socket(40001)])
        sockets.change { $0.acksLostAfterDestroying = [40000: 1] }
        let report = Purger(sockets: sockets, conntrack: FakeFlowTable([])).purge(matcher, options: options())
        #expect(sockets.sockets.isEmpty)
        #expect(sockets.destroyRequests == [40000, 40001], "not destroyed a second time")
        #expect(report.sockets.map(\.socket.id.cookie).sorted() == [40000, 40001])
        #expect(report.sockets.allSatisfy { $0.outcome == .ended })
        #expect(report.extraRounds == 1)
        #expect(report.troubles[NetlinkTrouble(.socketDestroy, .acksLost)] == 1)
    }

    @Test func aDestroyWhoseAckWasLostIsSentAgainWhileItsSocketIsStillThere() {
        let sockets = FakeSocketTable([socket(40000), socket(40001)])
        sockets.change { $0.acksLostBeforeDestroying = [40000: 1] }
        let report = Purger(sockets: sockets, conntrack: FakeFlowTable([])).purge(matcher, options: options())
        #expect(sockets.sockets.isEmpty)
        #expect(sockets.destroyRequests == [40000, 40001, 40000])
        #expect(report.sockets.map(\.socket.id.cookie).sorted() == [40000, 40001], "each reported once")
        #expect(report.sockets.allSatisfy { $0.outcome == .ended })
        #expect(report.extraRounds == 1)
    }

    @Test func roundsStopAfterTheMaximumOfExtraRounds() {
        let sockets = FakeSocketTable([socket(40000)])
        sockets.change { $0.acksLostBeforeDestroying = [40000: 10] }
        let report = Purger(sockets: sockets, conntrack: FakeFlowTable([])).purge(matcher, options: options { $0.maximumExtraRounds = 2 })
        #expect(sockets.destroyRequests == [40000, 40000, 40000])
        #expect(sockets.dumps == 3)
        #expect(sockets.cookies == [40000])
        #expect(report.extraRounds == 2)
        #expect(report.troubles[NetlinkTrouble(.socketDestroy, .acksLost)] == 3)
        #expect(!report.sockets.contains { $0.outcome == .ended })
    }

    @Test func aRefusedDestroyIsNotSentAgain() {
        let sockets = FakeSocketTable([socket(40000), socket(40001)])
        sockets.change { $0.refusals = [40000: .failed(.notPermitted)] }
        let report = Purger(sockets: sockets, conntrack: FakeFlowTable([])).purge(matcher, options: options())
        #expect(sockets.destroyRequests == [40000, 40001])
        #expect(sockets.dumps == 1)
        #expect(sockets.cookies == [40000])
        #expect(report.extraRounds == 0)
        let refused = report.sockets.first { $0.socket.id.cookie == 40000 }
        #expect(refused?.outcome.error?.errno == .notPermitted)
        #expect(report.sockets.first { $0.socket.id.cookie == 40001 }?.outcome == .ended)
    }

    @Test func aRefusedDestroyIsNotSentAgainByARoundAnotherSocketsLostAckEarned() {
        let sockets = FakeSocketTable([socket(40000), socket(40001)])
        sockets.change {
            $0.refusals = [40000: .failed(.notPermitted)]
            $0.acksLostBeforeDestroying = [40001: 1]
        }
        let report = Purger(sockets: sockets, conntrack: nil).purge(matcher, options: options())
        #expect(sockets.destroyRequests == [40000, 40001, 40001])
        #expect(sockets.cookies == [40000])
        #expect(report.extraRounds == 1)
        #expect(report.sockets.map(\.socket.id.cookie).sorted() == [40000, 40001], "each reported once")
        #expect(report.allErrors.count == 1)
    }

    @Test func aTornDumpEarnsAnotherRoundAndAWholeOneDoesNot() {
        let torn = FakeSocketTable([socket(40000), socket(40001), socket(40002)])
        torn.change { $0.tearingNextDump = true }
        let report = Purger(sockets: torn, conntrack: FakeFlowTable([])).purge(matcher, options: options())
        #expect(torn.sockets.isEmpty, "the socket the torn dump missed is found by the next")
        #expect(torn.dumps == 2)
        #expect(report.extraRounds == 1)
        #expect(report.socketsEnded == 3)

        let whole = FakeSocketTable([socket(40000), socket(40001), socket(40002)])
        let once = Purger(sockets: whole, conntrack: FakeFlowTable([])).purge(matcher, options: options())
        #expect(whole.sockets.isEmpty)
        #expect(whole.dumps == 1)
        #expect(once.extraRounds == 0)
    }

    @Test func theSocketLimitLeavesTheRestWithTheirEntries() {
        let sockets = FakeSocketTable((40000...40003).map { socket($0) })
        let flows = FakeFlowTable((40000...40003).map { entry($0) })
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options { $0.socketLimit = 2 })
        #expect(sockets.cookies == [40002, 40003])
        #expect(ports(flows.entries) == [40002, 40003])
        #expect(report.socketsEnded == 2)
        #expect(report.socketsLeftByLimit == 2)
        #expect(ports(report.conntrack.filter { $0.outcome == .ended }.map(\.entry)) == [40000, 40001])
        #expect(flows.flushRequests.isEmpty)
    }

    @Test func ownSocketsAndTheirEntriesAreSparedOnlyWhenAsked() {
        let probe = socket(50000, inode: 77)
        let other = socket(40000, inode: 100)
        let sockets = FakeSocketTable([probe, other], own: [77])
        let flows = FakeFlowTable([entry(50000), entry(40000)])
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options { $0.sparingOwnSockets = true })
        #expect(sockets.sockets == [probe])
        #expect(ports(flows.entries) == [50000])
        #expect(report.sockets.map(\.socket) == [other])

        let notSparing = FakeSocketTable([probe, other], own: [77])
        let theirFlows = FakeFlowTable([entry(50000), entry(40000)])
        _ = Purger(sockets: notSparing, conntrack: theirFlows).purge(matcher, options: options())
        #expect(notSparing.sockets.isEmpty)
        #expect(theirFlows.entries.isEmpty)
    }

    /// The retransmission watch picks its sentinels here: the agent's own heartbeat or kept-alive
    /// probe toward a backend is never one of them.
    @Test func theEstablishedSocketsAWatchPicksFromLeaveTheAgentsOwnOut() {
        let heartbeat = socket(50000, inode: 77)
        let balancers = socket(40000, inode: 100)
        let elsewhere = socket(40001, to: Self.live, inode: 101)
        let sockets = FakeSocketTable([heartbeat, balancers, elsewhere], own: [77])
        let found = Purger(sockets: sockets, conntrack: nil).establishedSockets(toward: [Self.backend])
        #expect(found.map(\.inode) == [100])
        #expect(
            Purger(sockets: FakeSocketTable([heartbeat, balancers]), conntrack: nil).establishedSockets(toward: [Self.backend]).count == 2)
    }

    @Test func aSocketANatHidIsFoundThroughItsEntryAndOnlyThatOne() {
        let hidden = socket(40000, to: Self.vip)
        let servedByLive = socket(40001, to: Self.vip)
        let sockets = FakeSocketTable([hidden, servedByLive])
        let flows = FakeFlowTable([entry(40000, to: Self.vip, repliedBy: Self.backend), entry(40001, to: Self.vip, repliedBy: Self.live)])
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options())
        #expect(sockets.sockets == [servedByLive])
        #expect(report.sockets.map(\.socket) == [hidden])
        #expect(report.sockets.first?.throughConntrack == true)
        #expect(report.sockets.first?.outcome == .ended)
        #expect(ports(flows.entries) == [40001])
        #expect(report.conntrack.map(\.matchedBy) == [.replySource])
    }

    // MARK: Conntrack rounds

    @Test func aLostDeleteAckIsRetriedAndWhatWasDeletedIsNotTargetedAgain() {
        let entries = (40000...40002).map { entry($0) }
        let flows = FakeFlowTable(entries)
        flows.change {
            $0.acksLostBeforeDeleting = [entries[1].identity: 1]
            $0.deletedStayListed = true  // the next dump still lists what was just deleted
        }
        let report = Purger(sockets: FakeSocketTable([]), conntrack: flows).purge(matcher, options: options())
        #expect(flows.entries.isEmpty)
        #expect(flows.deleteRequests == [entries[0], entries[1], entries[2], entries[1]].map(\.identity))
        #expect(ports(report.conntrack.map(\.entry)) == [40000, 40001, 40002])
        #expect(report.conntrack.allSatisfy { $0.outcome == .ended })
        #expect(report.extraRounds == 1)
        #expect(report.troubles[NetlinkTrouble(.conntrackDelete, .acksLost)] == 1)
    }

    @Test func aTornConntrackDumpEarnsAnotherRound() {
        let flows = FakeFlowTable((40000...40002).map { entry($0) })
        flows.change { $0.tearingNextDump = true }
        let report = Purger(sockets: FakeSocketTable([]), conntrack: flows).purge(matcher, options: options())
        #expect(flows.entries.isEmpty, "the entry the torn dump missed is found by the next")
        #expect(flows.dumps == 2)
        #expect(report.extraRounds == 1)
        #expect(report.conntrackDeleted == 3)
    }

    @Test func aLargePurgeFlushesTheDirectFlowsUnlisted() throws {
        let ports = (0..<300).map { UInt16(40000 + $0) }
        let sockets = FakeSocketTable(ports.map { socket($0) })
        let flows = FakeFlowTable(ports.map { entry($0) })
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options())
        #expect(sockets.sockets.count == 0)
        #expect(flows.entries.count == 0)
        #expect(flows.deleteRequests.count == 0)
        let flush = try ConntrackFlushRequest(.originalDestination(Self.backend.address, port: Self.backend.port, .tcp), zone: 0)
        #expect(flows.flushRequests == [flush])
        #expect(report.conntrackFlushes == 1)
        #expect(report.conntrackFlushedUnlisted == 300)
        #expect(report.conntrack.isEmpty, "nothing listed them")
    }

    /// `canaryTrusts`: the canary trial passed and the flush itself is refused; else the trial failed
    /// and no flush is sent at all.
    @Test(arguments: [true, false])
    func aFlushTheKernelRefusesLeavesTheEntriesToExactDeletes(canaryTrusts: Bool) {
        let ports = (0..<300).map { UInt16(40000 + $0) }
        let entries = ports.map { entry($0) }
        let sockets = FakeSocketTable(ports.map { socket($0) })
        let flows = FakeFlowTable(entries)
        flows.change {
            $0.canaryTrusts = canaryTrusts
            $0.flushAnswer = .failed(.invalidArgument)
        }
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options())
        #expect(flows.entries.count == 0)
        #expect(flows.flushRequests.count == (canaryTrusts ? 1 : 0))
        #expect(Set(flows.deleteRequests) == Set(entries.map(\.identity)))
        #expect(flows.deleteRequests.count == 300)
        #expect(flows.flushSupported == false)
        #expect(report.conntrackFlushes == 0)
        #expect(report.conntrackFlushedUnlisted == 0)
        #expect(report.conntrack.count == 300)
        #expect(report.conntrack.allSatisfy { $0.outcome == .ended && !$0.byFlush })
    }

    @Test func conntrackOnlyAfterSocketsLooksAtConntrackOnlyOnceASocketMatched() {
        let onlyAfter = options { $0.conntrackOnlyAfterSockets = true }
        let elsewhere = socket(40000, to: Self.live)
        let quiet = FakeSocketTable([elsewhere])
        let untouched = FakeFlowTable([entry(40001)])
        let nothing = Purger(sockets: quiet, conntrack: untouched).purge(matcher, options: onlyAfter)
        #expect(untouched.dumps == 0)
        #expect(ports(untouched.entries) == [40001])
        #expect(quiet.sockets == [elsewhere])
        #expect(nothing.conntrack.isEmpty)

        let matching = FakeSocketTable([socket(40000)])
        let flows = FakeFlowTable([entry(40000), entry(40001)])
        let report = Purger(sockets: matching, conntrack: flows).purge(matcher, options: onlyAfter)
        #expect(matching.sockets.isEmpty)
        #expect(flows.dumps > 0)
        #expect(flows.entries.isEmpty)
        #expect(report.conntrackDeleted == 2)
    }

    @Test func aDryRunOrAListTouchesNothing() {
        let sockets = [socket(40000), socket(40001, to: Self.vip)]
        let entries = [entry(40000), entry(40001, to: Self.vip, repliedBy: Self.backend)]
        for (options, outcome) in [(Purger.Options(dryRun: true), PurgeReport.Outcome.wouldEnd), (Purger.Options(), .listed)] {
            let socketTable = FakeSocketTable(sockets)
            let flowTable = FakeFlowTable(entries)
            let purger = Purger(sockets: socketTable, conntrack: flowTable)
            let report = options.dryRun ? purger.purge(matcher, options: options) : purger.list(matcher, options: options)
            #expect(socketTable.sockets == sockets)
            #expect(flowTable.entries == entries)
            #expect(socketTable.destroyRequests.isEmpty)
            #expect(flowTable.deleteRequests.isEmpty && flowTable.flushRequests.isEmpty)
            #expect(report.sockets.map(\.socket.id.cookie).sorted() == [40000, 40001])
            #expect(report.sockets.allSatisfy { $0.outcome == outcome })
            #expect(ports(report.conntrack.map(\.entry)) == [40000, 40001])
            #expect(report.conntrack.allSatisfy { $0.outcome == outcome })
        }
    }

    // MARK: One flow

    @Test func endFlowSparesAnOwnSocketWithItsEntryOnlyWhenAsked() {
        let probe = socket(50000, inode: 77)
        let sockets = FakeSocketTable([probe], own: [77])
        let flows = FakeFlowTable([entry(50000)])
        let spared = Purger(sockets: sockets, conntrack: flows).endFlow(entry(50000), options: options { $0.sparingOwnSockets = true })
        #expect(sockets.sockets == [probe])
        #expect(flows.entries.count == 1)
        #expect(spared.sockets.isEmpty && spared.conntrack.isEmpty)

        let ended = Purger(sockets: sockets, conntrack: flows).endFlow(entry(50000), options: options())
        #expect(sockets.sockets.isEmpty)
        #expect(flows.entries.isEmpty)
        #expect(ended.sockets.map(\.outcome) == [.ended])
        #expect(ended.conntrack.map(\.outcome) == [.ended])
    }

    @Test(arguments: SocketState.allCases)
    func endFlowDestroysOnlyAConnectingOrConnectedSocketAndAlwaysDeletesTheEntry(state: SocketState) {
        let sockets = FakeSocketTable([socket(40000, state: state)])
        let flows = FakeFlowTable([entry(40000)])
        let report = Purger(sockets: sockets, conntrack: flows).endFlow(entry(40000), options: options())
        let destroyed = state == .synSent || state == .established
        #expect(sockets.sockets.isEmpty == destroyed)
        #expect(sockets.destroyRequests.count == (destroyed ? 1 : 0))
        #expect(report.sockets.count == (destroyed ? 1 : 0))
        #expect(flows.entries.isEmpty)
        #expect(report.conntrack.map(\.outcome) == [.ended])
    }

    @Test func endFlowOfAForwardedFlowDeletesOnlyItsEntry() {
        let unrelated = socket(40001)
        let sockets = FakeSocketTable([unrelated])
        let flows = FakeFlowTable([entry(40000), entry(40001)])
        let report = Purger(sockets: sockets, conntrack: flows).endFlow(entry(40000), options: options())
        #expect(sockets.sockets == [unrelated])
        #expect(sockets.destroyRequests.isEmpty)
        #expect(ports(flows.entries) == [40001])
        #expect(report.sockets.isEmpty)
        #expect(report.conntrack.map(\.outcome) == [.ended])
    }

    @Test func endFlowTellsADirectFlowFromOneANatSent() {
        let direct = entry(40000)
        let translated = entry(40001, to: Self.vip, repliedBy: Self.backend)
        let sockets = FakeSocketTable([socket(40000), socket(40001, to: Self.vip)])
        let flows = FakeFlowTable([direct, translated])
        let purger = Purger(sockets: sockets, conntrack: flows)
        let first = purger.endFlow(direct, options: options())
        #expect(first.conntrack.map(\.matchedBy) == [.originalDestination])
        #expect(first.sockets.map(\.throughConntrack) == [false])
        let second = purger.endFlow(translated, options: options())
        #expect(second.conntrack.map(\.matchedBy) == [.replySource])
        #expect(second.sockets.map(\.throughConntrack) == [true])
        #expect(sockets.sockets.isEmpty && flows.entries.isEmpty)
    }

    // MARK: One socket

    enum SocketNow: String, CaseIterable, Sendable {
        case asChosen, replacedOnItsTuple, noLongerEstablished, ownProbe, noLongerWanted
    }

    @Test(arguments: SocketNow.allCases)
    func endSocketEndsOnlyTheSameStillEstablishedSocketStillWanted(now: SocketNow) {
        let chosen = socket(40000, cookie: 7, inode: 100)
        var current = chosen
        if now == .replacedOnItsTuple { current.id.cookie = 8 }
        if now == .noLongerEstablished { current.state = .finWait1 }
        let sockets = FakeSocketTable([current], own: now == .ownProbe ? [100] : [])
        let report = Purger(sockets: sockets, conntrack: nil).endSocket(
            exactly: chosen.id, family: .inet, transport: .tcp, options: options { $0.sparingOwnSockets = true }
        ) { _ in now != .noLongerWanted }
        let ends = now == .asChosen
        #expect(sockets.sockets.isEmpty == ends)
        #expect(sockets.destroyRequests == (ends ? [7] : []))
        #expect(report.sockets.map(\.outcome) == (ends ? [.ended] : []))
    }

    @Test func endSocketAsksStillWantedOfTheSocketAsItIsNowAndADryRunOnlySaysSo() {
        let chosen = socket(40000, cookie: 7)
        var current = chosen
        current.sendQueue = 512  // data began to flow since the census
        let sockets = FakeSocketTable([current])
        let purger = Purger(sockets: sockets, conntrack: nil)
        var seen: [DiagnosedSocket] = []
        let dry = purger.endSocket(exactly: chosen.id, family: .inet, transport: .tcp, options: options { $0.dryRun = true }) {
            seen.append($0)
            return true
        }
        #expect(seen.map(\.sendQueue) == [512])
        #expect(dry.sockets.map(\.outcome) == [.wouldEnd])
        #expect(sockets.sockets == [current] && sockets.destroyRequests.isEmpty)
        let spared = purger.endSocket(exactly: chosen.id, family: .inet, transport: .tcp, options: options()) { $0.sendQueue == 0 }
        #expect(spared.sockets.isEmpty)
        #expect(sockets.sockets == [current])
    }
}
