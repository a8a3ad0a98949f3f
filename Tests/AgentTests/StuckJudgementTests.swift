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

    /// A connection toward `backend` dropped on this side: its bytes queued, the window-probe timer
    /// firing unanswered (`fires` times), as the kernel shows a local OUTPUT DROP.
    func waiting(_ cookie: UInt64, toward backend: Endpoint, lastAck: UInt32, fires: UInt8) -> DiagnosedSocket {
        socket(cookie, toward: backend, sendQueue: 6, lastAck: lastAck, probes: fires, backoff: fires, timer: 4)
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

    func judge(_ sockets: [DiagnosedSocket], carried: StuckJudgement.Carried = .init(), pool: [Endpoint]? = nil) -> StuckJudgement {
        StuckJudgement(listed: sockets, pool: pool ?? self.pool, stuckAfterMilliseconds: after, carried: carried)
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
        #expect(judgement.carried.suspects == [1])
    }

    /// A write after a long idle shows an old ACK for one round trip: trouble only with evidence that
    /// the data has waited (a timer fired, or the same suspicion on the scan before).
    @Test func aFreshWriteAfterIdleTowardAnotherBackendIsTroubleOnlyOnTheNextScan() {
        let justWrote = socket(2, toward: Self.b, sendQueue: 120, lastAck: 60_000, probes: 0, backoff: 0, timer: 1)
        let first = judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), justWrote])
        #expect(!first.everyBackendInTrouble)
        #expect(first.endable == [1])
        #expect(first.carried.suspects == [1, 2])
        let second = judge([waiting(3, toward: Self.a, lastAck: 2100, fires: 2), justWrote], carried: first.carried)
        #expect(second.localFault)
        #expect(second.endable.isEmpty)
    }

    /// Idle connections with old ACKs (keepalive's business) say nothing of the path.
    @Test func anIdleConnectionTowardAnotherBackendIsNoTrouble() {
        let idle = socket(2, toward: Self.b, sendQueue: 0, lastAck: 600_000, probes: 3, backoff: 0, timer: 2)
        #expect(judge([waiting(1, toward: Self.a, lastAck: 2100, fires: 2), idle]).endable == [1])
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
        #expect(judgement.carried.suspects == [1])
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
        #expect(lifted.carried.held == [2: .init(timerFires: 5, lastAckMilliseconds: 7200)])
        // One more unanswered probe may still have gone into the fault: held.
        let once = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 9000, fires: 6)], carried: lifted.carried)
        #expect(once.endable.isEmpty)
        // Its probe answered: healthy, and the hold goes.
        let answered = judge([healthy(1, toward: Self.a), healthy(2, toward: Self.b)], carried: once.carried)
        #expect(answered.carried.held.isEmpty)
        #expect(answered.endable.isEmpty)
    }

    /// The other way: its own timer fires twice more unanswered with the fault gone: its path is
    /// still broken, and it is ended.
    @Test func aHeldConnectionWhosePathStaysBrokenIsEndedAfterTwoMoreFires() {
        let carried = heldThroughAFault()
        let twice = judge([healthy(1, toward: Self.a), waiting(2, toward: Self.b, lastAck: 20_000, fires: 7)], carried: carried)
        #expect(twice.endable == [2])
        #expect(twice.carried.held.isEmpty)
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
        #expect(carried.suspects == [1, 2])
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
