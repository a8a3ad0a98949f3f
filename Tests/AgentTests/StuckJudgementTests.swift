import NetworkAddress
import Reaper
import SockDiag
import Testing

@testable import Agent

/// The stuck scan's judgement of a pool (issue #21): every backend in trouble at once is a fault on
/// this side and nothing is ended, and what a local fault held is not ended once it lifts unless its
/// own path shows still broken. stuck_after 2 s: in trouble from a 1 s old ACK.
@Suite struct StuckJudgementTests {
    static let a = Endpoint(address: .v4(0x0A00_0002), port: 443), b = Endpoint(address: .v4(0x0A00_0003), port: 443)
    let pool = [a, b]
    let after: UInt32 = 2000

    static let t0 = ContinuousClock.now

    /// A connection toward `backend` whose segment went unanswered from its last ACK on: in flight,
    /// retransmitted `fires` times (RTO 200 ms, doubling), so one look shows it has waited `lastAck`.
    func waiting(_ cookie: UInt64, toward backend: Endpoint, lastAck: UInt32, fires: UInt8) -> DiagnosedSocket {
        let retransmitting = 200 * ((UInt32(1) << fires) - 1)
        var socket = socket(cookie, toward: backend, sendQueue: 6, lastAck: lastAck, probes: 0, backoff: fires, timer: 1)
        socket.tcpInfo?.unacked = 1
        socket.tcpInfo?.retransmits = fires
        socket.tcpInfo?.rtoMicroseconds = 200_000 << UInt32(fires)
        socket.tcpInfo?.lastDataSentMilliseconds = lastAck > retransmitting ? lastAck - retransmitting : 0
        return socket
    }

    /// A connection that writes every 6 s whose last write was lost 0.3 s ago: a 6.3 s old ACK, one
    /// retransmission 0.1 s ago, the RTO doubled once.
    func sparseWriterJustLost(_ cookie: UInt64, toward backend: Endpoint) -> DiagnosedSocket {
        var lost = socket(cookie, toward: backend, sendQueue: 6, lastAck: 6_300, probes: 0, backoff: 1, timer: 1)
        lost.tcpInfo?.unacked = 1
        lost.tcpInfo?.retransmits = 1
        lost.tcpInfo?.rtoMicroseconds = 400_000
        lost.tcpInfo?.lastDataSentMilliseconds = 100
        return lost
    }

    /// A connection dropped on this side (a local OUTPUT DROP): its bytes queued, never sent, a timer
    /// firing. One look cannot tell how long the data has waited.
    func dropped(_ cookie: UInt64, toward backend: Endpoint, lastAck: UInt32, backoff: UInt8) -> DiagnosedSocket {
        socket(cookie, toward: backend, sendQueue: 6, lastAck: lastAck, probes: 0, backoff: backoff, timer: 1)
    }

    /// Acknowledged a moment ago, nothing waiting.
    func healthy(_ cookie: UInt64, toward backend: Endpoint) -> DiagnosedSocket {
        socket(cookie, toward: backend, sendQueue: 0, lastAck: 30, probes: 0, backoff: 0, timer: 0)
    }

    func socket(
        _ cookie: UInt64, toward backend: Endpoint, sendQueue: UInt32, lastAck: UInt32, probes: UInt8, backoff: UInt8, timer: UInt8
    ) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: .tcp, state: .established,
            id: SocketID(source: Endpoint(address: .v4(0x0A00_0001), port: 40000 + UInt16(cookie)), destination: backend, cookie: cookie),
            timer: timer, sendQueue: sendQueue,
            tcpInfo: TCPInfo(probes: probes, backoff: backoff, lastAckReceivedMilliseconds: lastAck))
    }

    func judge(
        _ sockets: [DiagnosedSocket], carried: StuckJudgement.Carried = .init(), pool: [Endpoint]? = nil, at: Duration = .zero
    ) -> StuckJudgement {
        StuckJudgement(listed: sockets, pool: pool ?? self.pool, stuckAfterMilliseconds: after, carried: carried, at: Self.t0 + at)
    }

    // MARK: - Every backend in trouble at once, though only one is condemned

    /// Issue #21's heartbeats, 0.6 s apart: when A's crosses stuck_after, B's has waited 1.4 s.
    @Test func oneCondemnedWhileEveryOtherBackendIsInTroubleIsALocalFault() {
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: Self.b, lastAck: 1500, fires: 1)])
        #expect(judgement.condemned == [1])
        #expect(judgement.localFault)
        #expect(judgement.endable.isEmpty)
        #expect(Set(judgement.carried.held.keys) == [1, 2])
    }

    /// The other way: B's connection is acknowledged, so the fault is A's path, and A's is ended.
    @Test func oneCondemnedWhileAnotherBackendAcknowledgesIsEnded() {
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), healthy(2, toward: Self.b)])
        #expect(!judgement.localFault)
        #expect(judgement.endable == [1])
        #expect(judgement.carried.held.isEmpty)
    }

    /// Below half of stuck_after a wait is a live path's loss recovery (retransmits at 0.2, 0.6 s):
    /// it holds no other backend's stuck connection.
    @Test func aShortWaitTowardAnotherBackendIsNoTrouble() {
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: Self.b, lastAck: 900, fires: 2)])
        #expect(!judgement.everyBackendInTrouble)
        #expect(judgement.endable == [1])
        #expect(Set(judgement.carried.waitingSince.keys) == [1, 2])
    }

    /// A write after a long idle shows an old ACK for one round trip: trouble only once a scan has
    /// seen its data wait troubleAfter (1 s) with no ACK since.
    @Test func aFreshWriteAfterIdleTowardAnotherBackendIsTroubleOnlyOnceSeenWaiting() {
        let justWrote = socket(2, toward: Self.b, sendQueue: 120, lastAck: 60_000, probes: 0, backoff: 0, timer: 1)
        let first = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), justWrote])
        #expect(!first.everyBackendInTrouble)
        #expect(first.endable == [1])
        var stillWaiting = justWrote
        stillWaiting.tcpInfo?.lastAckReceivedMilliseconds = 60_999
        let tooSoon = judge(
            [waiting(3, toward: Self.a, lastAck: 3100, fires: 2), stillWaiting], carried: first.carried, at: .milliseconds(999))
        #expect(!tooSoon.everyBackendInTrouble)
        stillWaiting.tcpInfo?.lastAckReceivedMilliseconds = 61_000
        let second = judge([waiting(3, toward: Self.a, lastAck: 3100, fires: 2), stillWaiting], carried: first.carried, at: .seconds(1))
        #expect(second.localFault)
        #expect(second.endable.isEmpty)
    }

    // MARK: - How long the data has waited

    /// A connection that writes every 6 s: one lost segment (retransmitted once, 0.3 s into the loss)
    /// shows a 6 s old ACK, but its data has waited 0.3 s: not stuck, on this scan or the next.
    @Test func aSparseWritersLostSegmentIsNotStuckUntilItsDataWaitedStuckAfter() {
        var lost = sparseWriterJustLost(1, toward: Self.a)
        let first = judge([lost], pool: [Self.a])
        #expect(first.condemned.isEmpty)
        // Lost for good: 1.9 s in (retransmitted at 0.2, 0.6 and 1.4 s), not yet; 2.0 s in, stuck.
        lost.tcpInfo?.lastAckReceivedMilliseconds = 7_900
        lost.tcpInfo?.backoff = 3
        lost.tcpInfo?.retransmits = 3
        lost.tcpInfo?.rtoMicroseconds = 1_600_000
        lost.tcpInfo?.lastDataSentMilliseconds = 500
        #expect(judge([lost], carried: first.carried, pool: [Self.a], at: .milliseconds(1_600)).condemned.isEmpty)
        lost.tcpInfo?.lastAckReceivedMilliseconds = 8_000
        lost.tcpInfo?.lastDataSentMilliseconds = 600
        #expect(judge([lost], carried: first.carried, pool: [Self.a], at: .milliseconds(1_700)).condemned == [1])
    }

    /// Bytes dropped on this side show no clock in one look; scans that see them waiting with no ACK
    /// since measure it: condemned once seen waiting stuck_after, not on the first look.
    @Test func aLocalDropIsStuckOnceScansHaveSeenItWaitStuckAfter() {
        let first = judge([dropped(1, toward: Self.a, lastAck: 3_000, backoff: 3)], pool: [Self.a])
        #expect(first.condemned.isEmpty)
        let later = judge([dropped(1, toward: Self.a, lastAck: 5_000, backoff: 5)], carried: first.carried, pool: [Self.a], at: .seconds(2))
        #expect(later.condemned == [1])
        #expect(later.observedWaits == [1: 2_000])
    }

    /// Trouble only holds, so it takes a fired timer as evidence: a sparse writer caught by the fault
    /// counts at once, though it is not condemned (simulation seed 1,211); the other backend's
    /// long-waiting connection is then held, not ended.
    @Test func aSparseWriterJustCaughtCountsTowardALocalFault() {
        let caught = sparseWriterJustLost(2, toward: Self.b)
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 6_700, fires: 5), caught])
        #expect(judgement.condemned == [1])
        #expect(judgement.localFault)
        #expect(judgement.endable.isEmpty)
        // The other way: without the fault on B's side, A's is ended.
        #expect(judge([waiting(1, toward: Self.a, lastAck: 6_700, fires: 5), healthy(2, toward: Self.b)]).endable == [1])
    }

    /// An ACK between two scans ends the wait the first saw: data waiting on the second has waited
    /// only since then.
    @Test func anAckBetweenScansStartsTheWaitAfresh() {
        let first = judge([dropped(1, toward: Self.a, lastAck: 3_000, backoff: 3)], pool: [Self.a])
        let acknowledged = judge(
            [dropped(1, toward: Self.a, lastAck: 1_500, backoff: 3)], carried: first.carried, pool: [Self.a], at: .seconds(2))
        #expect(acknowledged.condemned.isEmpty)
        #expect(acknowledged.observedWaits == [1: 0])
    }

    /// Idle connections with old ACKs (keepalive's business) say nothing of the path.
    @Test func anIdleConnectionTowardAnotherBackendIsNoTrouble() {
        let idle = socket(2, toward: Self.b, sendQueue: 0, lastAck: 600_000, probes: 3, backoff: 0, timer: 2)
        #expect(judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), idle]).endable == [1])
    }

    /// A backend that holds no connection (a dead one whose connections were reaped) shows nothing:
    /// the two others in trouble at once are a local fault (simulation seed 265: a pool of four, one
    /// dead, a fault on this side ended every connection of the three that answered).
    @Test func aBackendHoldingNoConnectionDoesNotHideALocalFault() {
        let dead = Endpoint(address: .v4(0x0A00_0004), port: 443)
        let judgement = judge(
            [waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: Self.b, lastAck: 1500, fires: 1)],
            pool: [Self.a, Self.b, dead])
        #expect(judgement.localFault)
        #expect(judgement.endable.isEmpty)
        // The other way: the third holds a connection that is acknowledged: A's and B's paths.
        let answered = judge(
            [
                waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: Self.b, lastAck: 1500, fires: 1),
                healthy(3, toward: dead),
            ],
            pool: [Self.a, Self.b, dead])
        #expect(!answered.localFault)
        #expect(answered.endable == [1])
    }

    /// A backend whose connections show nothing either way (idle ones: a balancer's reconnects to a
    /// backend just back; or ones still in a lifted fault's backoff) hides no local fault either:
    /// missing evidence is not health (simulation seed 120,768,847). The other way: one of its
    /// connections heard from the peer within troubleAfter, so the trouble is A's and B's paths.
    @Test func aBackendWhoseConnectionsShowNothingDoesNotHideALocalFault() {
        let third = Endpoint(address: .v4(0x0A00_0004), port: 443)
        let inTrouble = [waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: Self.b, lastAck: 1500, fires: 1)]
        let idle = socket(3, toward: third, sendQueue: 0, lastAck: 45_000, probes: 0, backoff: 0, timer: 0)
        var idleFor = idle.tcpInfo!
        idleFor.lastDataReceivedMilliseconds = 45_000
        var quiet = idle
        quiet.tcpInfo = idleFor
        let judgement = judge(inTrouble + [quiet], pool: [Self.a, Self.b, third])
        #expect(judgement.localFault)
        #expect(judgement.endable.isEmpty)
        var heard = quiet
        heard.tcpInfo?.lastDataReceivedMilliseconds = 300  // a watch's line, 0.3 s ago
        let answered = judge(inTrouble + [heard], pool: [Self.a, Self.b, third])
        #expect(!answered.localFault)
        #expect(answered.endable == [1])
    }

    /// One backend holding connections, whatever the pool's size, is never a local fault.
    @Test func oneBackendHoldingConnectionsIsNeverALocalFault() {
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: Self.a, lastAck: 2100, fires: 2)])
        #expect(!judgement.localFault)
        #expect(judgement.endable == [1, 2])
    }

    /// One endpoint, one verdict: a pool of one backend cannot see a local fault, so a connection that
    /// another pool holding the same backend holds is not ended by it (simulation seed 3,419).
    @Test func aConnectionAnotherPoolHoldsIsNotEndedByAPoolOfOne() {
        let stuck = waiting(1, toward: Self.a, lastAck: 2100, fires: 2)
        let alone = StuckJudgement(
            listed: [stuck], pool: [Self.a], stuckAfterMilliseconds: after, carried: .init(), heldElsewhere: [1], at: Self.t0)
        #expect(alone.condemned == [1])
        #expect(alone.endable.isEmpty)
        #expect(judge([stuck], pool: [Self.a]).endable == [1])
    }

    /// One backend alone (incident 3: a balancer lost one flow's state) says nothing of where the fault is.
    @Test func aPoolOfOneBackendIsNeverALocalFault() {
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2)], pool: [Self.a])
        #expect(!judgement.localFault)
        #expect(judgement.endable == [1])
    }

    @Test func connectionsTowardOtherDestinationsAreNotThePools() {
        let elsewhere = Endpoint(address: .v4(0x0A00_0009), port: 443)
        let judgement = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), waiting(2, toward: elsewhere, lastAck: 1500, fires: 1)])
        #expect(judgement.endable == [1])
        #expect(Set(judgement.carried.waitingSince.keys) == [1])
    }

    // MARK: - After a local fault lifts

    /// Both held through the fault (7 s, five unanswered probes each); it lifts, A's next probe is
    /// answered, B's is seconds away: B is the only stuck one, and is not ended.
    func heldThroughAFault() -> StuckJudgement.Carried {
        let fault = judge([waiting(1, toward: Self.a, lastAck: 7000, fires: 5), waiting(2, toward: Self.b, lastAck: 7200, fires: 5)])
        #expect(fault.localFault)
        return fault.carried
    }

    @Test func theLastOneStillWaitingAfterALocalFaultLiftsIsHeld() {
        let carried = heldThroughAFault()
        let lifted = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 7700, fires: 5)], carried: carried)
        #expect(lifted.condemned == [2])
        #expect(!lifted.localFault)
        #expect(lifted.endable.isEmpty)
        #expect(lifted.carried.held == [2: .init(timerFires: 5, lastAckMilliseconds: 7200, sinceLift: true, firesWhenFaultLastSeen: 5)])
        // Its next retransmission, after the lift, answered: healthy, and the hold goes.
        let answered = judge([healthy(1, toward: Self.a), healthy(2, toward: Self.b)], carried: lifted.carried)
        #expect(answered.carried.held.isEmpty)
        #expect(answered.endable.isEmpty)
    }

    /// The other way: its own timer fires once more unanswered after the lift was seen: its path is
    /// still broken, and it is ended.
    @Test func aHeldConnectionWhosePathStaysBrokenIsEndedAfterOneMoreFire() {
        let carried = heldThroughAFault()
        let lifted = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 7_700, fires: 5)], carried: carried)
        #expect(lifted.endable.isEmpty)
        let once = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 13_000, fires: 6)], carried: lifted.carried)
        // Ended once troubleAfter (1 s) has passed without a new fault showing.
        #expect(once.endable.isEmpty)
        let confirmed = judge(
            [healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 14_000, fires: 6)], carried: once.carried, at: .seconds(1))
        #expect(confirmed.endable == [2])
        #expect(confirmed.carried.held.isEmpty)
    }

    /// The fire that showed its path broken went into a new fault: every backend in trouble again
    /// within troubleAfter, and it is held afresh (simulation seed 4,741).
    @Test func aFireIntoANewFaultReleasesNothing() {
        let lifted = judge(
            [healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 7_700, fires: 5)], carried: heldThroughAFault())
        let once = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 13_000, fires: 6)], carried: lifted.carried)
        let newFault = judge(
            [waiting(1, toward: Self.a, lastAck: 1_500, fires: 1), waiting(2, toward: Self.b, lastAck: 14_000, fires: 6)],
            carried: once.carried,
            at: .seconds(1))
        #expect(newFault.localFault)
        #expect(newFault.endable.isEmpty)
        #expect(newFault.carried.held[2]?.releaseAt == nil)
    }

    /// What a lifted fault still holds says nothing of a new one: A's leftover (its next probe far
    /// away) and B's fresh blackhole are no local fault, and B's is ended (simulation seed 6,407).
    @Test func aLiftedFaultsLeftoversDoNotMakeANewBlackholeLocal() {
        let carried = heldThroughAFault()
        let lift = judge([waiting(1, toward: Self.a, lastAck: 8_000, fires: 5), healthy(2, toward: Self.b)], carried: carried)
        #expect(lift.carried.faultLifted)
        let blackhole = judge(
            [waiting(1, toward: Self.a, lastAck: 9_000, fires: 5), waiting(3, toward: Self.b, lastAck: 2_100, fires: 2)],
            carried: lift.carried)
        #expect(!blackhole.everyBackendInTrouble)
        #expect(blackhole.endable == [3])
        // The other way: before the lift is known, the same listing is the fault going on.
        #expect(
            judge(
                [waiting(1, toward: Self.a, lastAck: 9_000, fires: 5), waiting(3, toward: Self.b, lastAck: 2_100, fires: 2)],
                carried: carried
            ).endable.isEmpty)
    }

    /// A second fault while the first's leftovers still wait (simulation seed 150,181,092): A's held
    /// connection fired between the last scan that saw the first fault and the one that knew it lifted
    /// (B's was acknowledged), unanswered: it may have gone into the second fault as well as the first,
    /// so it is trouble now. B's fresh write caught by the second fault is then no lone blackhole, and
    /// nothing is ended. The other way: A's did not fire meanwhile, it is a leftover that shows nothing,
    /// and B's lone blackhole is ended.
    @Test func aFireBeforeTheLiftWasKnownIsTroubleInANewFault() {
        let fault = judge([
            waiting(1, toward: Self.a, lastAck: 7000, fires: 5), waiting(2, toward: Self.b, lastAck: 7200, fires: 5),
            waiting(3, toward: Self.b, lastAck: 7100, fires: 5),
        ])
        #expect(fault.localFault)
        func secondFault(aFired: Bool) -> StuckJudgement {
            // A's sixth fire went out 0.3 s before the scan that knew the lift, unanswered since.
            func a(lastAck: UInt32, sentAgo: UInt32) -> DiagnosedSocket {
                var one = waiting(1, toward: Self.a, lastAck: lastAck, fires: aFired ? 6 : 5)
                if aFired { one.tcpInfo?.lastDataSentMilliseconds = sentAgo }
                return one
            }
            let lift = judge(
                [a(lastAck: 7_700, sentAgo: 300), waiting(2, toward: Self.b, lastAck: 7_900, fires: 5), healthy(3, toward: Self.b)],
                carried: fault.carried)
            #expect(lift.carried.faultLifted && lift.endable.isEmpty)
            return judge(
                [
                    a(lastAck: 9_000, sentAgo: 1_300), waiting(2, toward: Self.b, lastAck: 9_200, fires: 5),
                    waiting(3, toward: Self.b, lastAck: 2_100, fires: 2),
                ],
                carried: lift.carried, at: .seconds(1))
        }
        let caught = secondFault(aFired: true)
        #expect(caught.everyBackendInTrouble && caught.endable.isEmpty, "\(caught.endable)")
        let lone = secondFault(aFired: false)
        #expect(!lone.everyBackendInTrouble && lone.endable == [3], "\(lone.endable)")
    }

    /// A fault that goes on unseen: A's held connection is gone (reaped) and A's new one is idle, so
    /// no scan sees every backend in trouble, but nothing the fault held was acknowledged either. B's
    /// fires go into the fault and release nothing, however many (simulation seeds 1,192, 3,419, 5,611).
    @Test func firesIntoAFaultThatGoesOnUnseenReleaseNothing() {
        let fault = judge([
            waiting(1, toward: Self.a, lastAck: 7000, fires: 5), waiting(2, toward: Self.b, lastAck: 7200, fires: 5),
            waiting(4, toward: Self.b, lastAck: 7100, fires: 5),
        ])
        #expect(fault.localFault)
        let unseen = judge(
            [
                healthy(3, toward: Self.a), waiting(2, toward: Self.b, lastAck: 26_000, fires: 7),
                waiting(4, toward: Self.b, lastAck: 26_000, fires: 7),
            ],
            carried: fault.carried)
        #expect(!unseen.everyBackendInTrouble)
        #expect(unseen.endable.isEmpty)
        #expect(unseen.carried.held[2] == .init(timerFires: 5, lastAckMilliseconds: 7200))
        let later = judge(
            [
                healthy(3, toward: Self.a), waiting(2, toward: Self.b, lastAck: 60_000, fires: 9),
                waiting(4, toward: Self.b, lastAck: 60_000, fires: 9),
            ],
            carried: unseen.carried)
        #expect(later.endable.isEmpty)
        #expect(!later.carried.faultLifted)
        // The other way: B's other held connection acknowledged is the lift; from then a fire ends 2.
        let lift = judge(
            [healthy(3, toward: Self.a), waiting(2, toward: Self.b, lastAck: 61_000, fires: 9), healthy(4, toward: Self.b)],
            carried: later.carried)
        #expect(lift.endable.isEmpty)
        #expect(lift.carried.faultLifted)
        let broken = judge([healthy(3, toward: Self.a), waiting(2, toward: Self.b, lastAck: 220_000, fires: 10)], carried: lift.carried)
        #expect(broken.endable.isEmpty)
        #expect(
            judge(
                [healthy(3, toward: Self.a), waiting(2, toward: Self.b, lastAck: 221_000, fires: 10)], carried: broken.carried,
                at: .seconds(1)
            )
            .endable == [
                2
            ])
    }

    /// A retransmission sent less than a round trip ago may still be answered: the second fire after
    /// the fault, 21 ms before the scan, releases nothing yet (simulation seed 1,053).
    @Test func aFireJustSentIsNotYetUnanswered() {
        let carried = judge(
            [healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 7_700, fires: 5)], carried: heldThroughAFault()
        ).carried
        var justSent = waiting(2, toward: Self.b, lastAck: 26_000, fires: 7)
        justSent.tcpInfo?.lastDataSentMilliseconds = 21
        let soon = judge([healthy(1, toward: Self.a), justSent], carried: carried)
        #expect(soon.endable.isEmpty)
        #expect(soon.carried.held[2] != nil)
    }

    /// Acknowledged since the fault (a younger last ACK), then stuck again on its own path: the hold
    /// went with the ACK, and it is judged afresh.
    @Test func aHeldConnectionAcknowledgedSinceIsJudgedAfresh() {
        let carried = heldThroughAFault()
        let again = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 2500, fires: 2)], carried: carried)
        #expect(again.endable == [2])
    }

    /// A connection that was not in trouble during the fault is not held by it.
    @Test func aConnectionStuckOnlyAfterTheFaultIsEnded() {
        let carried = heldThroughAFault()
        let later = judge([healthy(1, toward: Self.a), waiting(3, toward: Self.b, lastAck: 2500, fires: 2)], carried: carried)
        #expect(later.endable == [3])
        #expect(later.carried.held.isEmpty)
    }

    /// What is carried stays bounded by the listing: a connection gone is forgotten.
    @Test func whatIsCarriedIsOnlyWhatIsListed() {
        let carried = heldThroughAFault()
        #expect(Set(carried.waitingSince.keys) == [1, 2])
        let gone = judge([healthy(1, toward: Self.a)], carried: carried)
        #expect(gone.carried == .init())
    }

    /// A local fault seen before anything crossed stuck_after is reported by no one, but still holds.
    @Test func everyBackendInTroubleBeforeAnyIsCondemnedStillHolds() {
        let early = judge([waiting(1, toward: Self.a, lastAck: 1400, fires: 1), waiting(2, toward: Self.b, lastAck: 1200, fires: 1)])
        #expect(early.everyBackendInTrouble)
        #expect(!early.localFault)
        #expect(Set(early.carried.held.keys) == [1, 2])
        let lifted = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 2600, fires: 2)], carried: early.carried)
        #expect(lifted.endable.isEmpty)
    }
}
