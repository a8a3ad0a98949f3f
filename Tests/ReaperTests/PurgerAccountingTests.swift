import Conntrack
import Netlink
import NetworkAddress
@testable import Reaper
import SockDiag
import Testing

/// What a purge reports when the kernel's answers come late or not at all, and what a limit counts:
/// the report is what the agent's metrics, audit lines and budget are made of, so each item in it
/// is what the kernel confirmed, once.
extension PurgerTests {
    static let acksLostDestroying = NetlinkTrouble(.socketDestroy, .acksLost)
    static let acksLostDeleting = NetlinkTrouble(.conntrackDelete, .acksLost)

    func outcomes(_ report: PurgeReport) -> [UInt64: PurgeReport.Outcome] {
        Dictionary(report.sockets.map { ($0.socket.id.cookie, $0.outcome) }, uniquingKeysWith: { first, _ in first })
    }

    // MARK: Lost acks in the last round

    @Test func aDestroyWhoseAckWasLostInTheLastRoundIsSettledByALookupOfItsSocket() {
        let sockets = FakeSocketTable([socket(40000), socket(40001), socket(40002)])
        sockets.change {
            $0.acksLostAfterDestroying = [40000: 1]  // destroyed: only its ack is lost
            $0.acksLostBeforeDestroying = [40001: 1]  // still there
        }
        let report = Purger(sockets: sockets, conntrack: nil).purge(matcher, options: options { $0.maximumExtraRounds = 0 })
        #expect(sockets.cookies == [40001])
        #expect(outcomes(report) == [40000: .ended, 40001: .unconfirmed, 40002: .ended])
        #expect(report.sockets.count == 3, "each reported once")
        #expect(report.socketsEnded == 2)
        #expect(report.unconfirmed == 1)
        #expect(report.troubles[Self.acksLostDestroying] == 2)
        #expect(sockets.dumps == 1, "no walk of the table: a lookup each")
        #expect(sockets.lookups == 2)
    }

    /// 40000's destroy is lost before the kernel acts; the next dump, torn, misses it: it is not
    /// taken for ended, and the round after finds and ends it.
    @Test func aSocketATornDumpMissedIsNotTakenForEndedByItsLostAck() {
        let sockets = FakeSocketTable([socket(40000), socket(40001)])
        sockets.change {
            $0.acksLostBeforeDestroying = [40000: 1]
            $0.tearingDump = 2
        }
        let report = Purger(sockets: sockets, conntrack: nil).purge(matcher, options: options())
        #expect(sockets.sockets.isEmpty)
        #expect(sockets.destroyRequests == [40000, 40001, 40000])
        #expect(outcomes(report) == [40000: .ended, 40001: .ended])
        #expect(report.sockets.count == 2)
        #expect(report.extraRounds == 2)
    }

    @Test func aDeleteWhoseAckWasLostCountsAsEndedOnceTheNextDumpNoLongerListsIt() {
        let entries = (40000...40002).map { entry($0) }
        let flows = FakeFlowTable(entries)
        flows.change { $0.acksLostAfterDeleting = [entries[1].identity: 1] }
        let report = Purger(sockets: FakeSocketTable([]), conntrack: flows).purge(matcher, options: options())
        #expect(flows.entries.isEmpty)
        #expect(flows.deleteRequests == entries.map(\.identity), "not deleted a second time")
        #expect(ports(report.conntrack.map(\.entry)) == [40000, 40001, 40002])
        #expect(report.conntrack.allSatisfy { $0.outcome == .ended })
        #expect(report.conntrackDeleted == 3)
        #expect(report.extraRounds == 1)
        #expect(report.troubles[Self.acksLostDeleting] == 1)
    }

    @Test func aDeleteWhoseAckWasLostAndWhoseDyingEntryIsListedAgainCountsAsEndedWhenTheRetryFindsItGone() {
        let entries = (40000...40002).map { entry($0) }
        let flows = FakeFlowTable(entries)
        flows.change {
            $0.acksLostAfterDeleting = [entries[1].identity: 1]
            $0.deletedStayListed = true
        }
        let report = Purger(sockets: FakeSocketTable([]), conntrack: flows).purge(matcher, options: options())
        #expect(flows.entries.isEmpty)
        #expect(flows.deleteRequests == [entries[0], entries[1], entries[2], entries[1]].map(\.identity))
        #expect(report.conntrack.count == 3)
        #expect(report.conntrackDeleted == 3)
    }

    @Test func aDeleteWhoseAckWasLostInTheLastRoundIsSettledByAnotherDump() {
        let entries = (40000...40002).map { entry($0) }
        let flows = FakeFlowTable(entries)
        flows.change {
            $0.acksLostAfterDeleting = [entries[0].identity: 1]
            $0.acksLostBeforeDeleting = [entries[1].identity: 1]
        }
        let report = Purger(sockets: FakeSocketTable([]), conntrack: flows).purge(matcher, options: options { $0.maximumExtraRounds = 0 })
        #expect(ports(flows.entries) == [40001])
        let byPort = Dictionary(uniqueKeysWithValues: report.conntrack.map { ($0.entry.original.source.port, $0.outcome) })
        #expect(byPort == [40000: .ended, 40001: .unconfirmed, 40002: .ended])
        #expect(report.conntrackDeleted == 2)
        #expect(report.unconfirmed == 1)
        #expect(report.troubles[Self.acksLostDeleting] == 2)
        #expect(flows.dumps == 2, "the purge's own dump and one to settle the lost acks")
    }

    // MARK: NAT'd sockets

    @Test func aNatdSocketsLostAckIsTroubleLikeADirectOnesAndSettledTheSameWay() {
        let sockets = FakeSocketTable([socket(40000, to: Self.vip), socket(40001, to: Self.vip)])
        sockets.change {
            $0.acksLostAfterDestroying = [40000: 1]
            $0.acksLostBeforeDestroying = [40001: 1]
        }
        let flows = FakeFlowTable([
            entry(40000, to: Self.vip, repliedBy: Self.backend), entry(40001, to: Self.vip, repliedBy: Self.backend),
        ])
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options())
        #expect(sockets.cookies == [40001])
        #expect(outcomes(report) == [40000: .ended, 40001: .unconfirmed])
        #expect(report.sockets.allSatisfy { $0.throughConntrack })
        #expect(report.troubles[Self.acksLostDestroying] == 2)
        #expect(sockets.lookups == 2)
    }

    // MARK: One flow, one socket

    /// `gone`: the kernel acted and only its acks were lost; else it never saw the requests.
    @Test(arguments: [true, false])
    func endFlowCountsALostAckAsTroubleAndSettlesIt(gone: Bool) {
        let sockets = FakeSocketTable([socket(40000)])
        let flows = FakeFlowTable([entry(40000)])
        sockets.change { state in
            if gone { state.acksLostAfterDestroying = [40000: 1] } else { state.acksLostBeforeDestroying = [40000: 1] }
        }
        flows.change { state in
            let identity = entry(40000).identity
            if gone { state.acksLostAfterDeleting = [identity: 1] } else { state.acksLostBeforeDeleting = [identity: 1] }
        }
        let report = Purger(sockets: sockets, conntrack: flows).endFlow(entry(40000), options: options())
        let outcome: PurgeReport.Outcome = gone ? .ended : .unconfirmed
        #expect(sockets.cookies.isEmpty == gone)
        #expect(flows.entries.isEmpty == gone)
        #expect(report.sockets.map(\.outcome) == [outcome])
        #expect(report.conntrack.map(\.outcome) == [outcome])
        #expect(report.troubles[Self.acksLostDestroying] == 1)
        #expect(report.troubles[Self.acksLostDeleting] == 1)
    }

    @Test(arguments: [true, false])
    func endSocketCountsALostAckAsTroubleAndSettlesIt(gone: Bool) {
        let chosen = socket(40000)
        let sockets = FakeSocketTable([chosen])
        sockets.change { state in
            if gone { state.acksLostAfterDestroying = [40000: 1] } else { state.acksLostBeforeDestroying = [40000: 1] }
        }
        let report = Purger(sockets: sockets, conntrack: nil).endSocket(
            exactly: chosen.id, family: .inet, transport: .tcp, options: options()
        ) { _ in true }
        #expect(sockets.cookies.isEmpty == gone)
        #expect(report.sockets.map(\.outcome) == [gone ? .ended : .unconfirmed])
        #expect(report.troubles[Self.acksLostDestroying] == 1)
    }

    // MARK: What the limit counts

    @Test func aRefusedDirectDestroyTakesNoneOfTheLimitFromTheNatdSockets() {
        let refused = socket(40000)
        let natted = [socket(40001, to: Self.vip), socket(40002, to: Self.vip)]
        let sockets = FakeSocketTable([refused] + natted)
        sockets.change { $0.refusals = [40000: .failed(.notPermitted)] }
        let flows = FakeFlowTable([
            entry(40001, to: Self.vip, repliedBy: Self.backend), entry(40002, to: Self.vip, repliedBy: Self.backend),
        ])
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options { $0.socketLimit = 2 })
        #expect(sockets.cookies == [40000])
        #expect(report.socketsEnded == 2)
        #expect(report.socketsLeftByLimit == 0)
        #expect(report.socketsCountedByLimit == 2)
    }

    /// Round one: 40000 refused (and then closing on its own), 40001's ack lost, 40002 ended, 40003
    /// left by the limit of 3. Round two finds room for 40003 and nothing left.
    @Test func whatTheLimitLeftIsWhatTheLastRoundLeft() {
        let sockets = FakeSocketTable((40000...40003).map { socket($0) })
        sockets.change {
            $0.refusals = [40000: .failed(.notPermitted)]
            $0.closingAfterDump = [1: [40000]]
            $0.acksLostAfterDestroying = [40001: 1]
        }
        let flows = FakeFlowTable((40000...40003).map { entry($0) })
        let report = Purger(sockets: sockets, conntrack: flows).purge(matcher, options: options { $0.socketLimit = 3 })
        #expect(sockets.sockets.isEmpty)
        #expect(report.extraRounds == 1)
        #expect(outcomes(report)[40003] == .ended)
        #expect(report.socketsEnded == 3)
        #expect(report.socketsLeftByLimit == 0, "the first round's one left was ended by the second")
        #expect(flows.entries.isEmpty, "the entry of the socket the second round ended goes too")
    }

    // MARK: What a purge spares

    @Test(arguments: [true, false])
    func connectionsTheDestinationOpenedToThisHostAreSparedOnlyWhenAsked(sparing: Bool) {
        let portless = DestinationMatcher(destinations: [Destination(address: Self.backend.address, port: nil)], transports: [.tcp])
        let dialled = socket(40000)
        // The destination's own connection to this host's server on port 22: its local end listens.
        let accepted = DiagnosedSocket(
            family: .inet, transport: .tcp, state: .established,
            id: SocketID(source: Self.client(22), destination: Self.endpoint("10.0.0.3", 51000), cookie: 22), inode: 0)
        let sockets = FakeSocketTable([dialled, accepted])
        sockets.change { $0.listening = [Self.endpoint("0.0.0.0", 22)] }
        let report = Purger(sockets: sockets, conntrack: nil).purge(portless, options: options { $0.sparingInbound = sparing })
        #expect(sockets.sockets == (sparing ? [accepted] : []))
        #expect(report.sockets.map(\.socket.id.cookie).sorted() == (sparing ? [40000] : [22, 40000]))
        #expect(report.socketsEnded == (sparing ? 1 : 2))
    }

    /// A connect dialled to the dead backend that a DNAT sent to a live one: its socket and entry stay,
    /// known from the prefetched dump's dialled side, or (new connects only) from a look made for it.
    @Test(arguments: [false, true])
    func aFlowDialledToTheDeadBackendButServedByALiveOneIsSpared(conntrackOnlyAfterSockets: Bool) {
        let servedByLive = socket(40000)
        let sockets = FakeSocketTable([servedByLive, socket(40001)])
        let flows = FakeFlowTable([entry(40000, repliedBy: Self.live), entry(40001)])
        let report = Purger(sockets: sockets, conntrack: flows).purge(
            matcher, options: options { $0.conntrackOnlyAfterSockets = conntrackOnlyAfterSockets })
        #expect(sockets.sockets == [servedByLive])
        #expect(sockets.destroyRequests == [40001])
        #expect(report.sockets.map(\.socket.id.cookie) == [40001])
        #expect(ports(flows.entries) == [40000])
        #expect(ports(report.conntrack.map(\.entry)) == [40001])
        #expect(flows.flushRequests.isEmpty)
    }
}
