import NetworkAddress
import Reaper
import SockDiag
import Testing

@Suite struct StuckRuleTests {
    let rule = StuckRule(afterMilliseconds: 3000)
    let oneShot = StuckRule(afterMilliseconds: 3000, firedTimerIsEvidence: true)

    func socket(
        state: SocketState = .established, sendQueue: UInt32 = 0, unacked: UInt32 = 0, lastAck: UInt32 = 0,
        retransmits: UInt8 = 0, backoff: UInt8 = 0, cookie: UInt64 = 1, timer: UInt8 = 0, probes: UInt8 = 0,
        rto: UInt32 = 0, lastSend: UInt32 = 0
    ) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: .tcp, state: state,
            id: SocketID(
                source: Endpoint(address: .v4(0x0A00_0001), port: 40000),
                destination: Endpoint(address: .v4(0x0A00_0002), port: 443), cookie: cookie),
            timer: timer, sendQueue: sendQueue,
            tcpInfo: TCPInfo(
                retransmits: retransmits, probes: probes, backoff: backoff, rtoMicroseconds: rto * 1000, unacked: unacked,
                lastDataSentMilliseconds: lastSend, lastAckReceivedMilliseconds: lastAck))
    }

    /// A peer that shuts its window and acknowledges every window probe is alive, however long the
    /// window stays shut (the probes back off to two minutes, and the last ACK ages with them).
    @Test func aClosedWindowWhosePeerAnswersItsProbesIsAlive() {
        let answered = socket(sendQueue: 65_000, lastAck: 45_000, backoff: 6, cookie: 9, timer: 4, probes: 0)
        #expect(!rule.isSuspicious(answered))
        #expect(!StuckRule(afterMilliseconds: 3000, observedWaits: [9: 60_000]).condemns(answered))
        #expect(!StuckRule(afterMilliseconds: 3000, firedTimerIsEvidence: true).condemns(answered))
        // The other way: window probes go unanswered: the peer is gone.
        let unanswered = socket(sendQueue: 65_000, lastAck: 45_000, backoff: 6, cookie: 9, timer: 4, probes: 3)
        #expect(rule.isSuspicious(unanswered))
        #expect(StuckRule(afterMilliseconds: 3000, observedWaits: [9: 3000]).condemns(unanswered))
        #expect(StuckRule(afterMilliseconds: 3000, firedTimerIsEvidence: true).condemns(unanswered))
    }

    /// The agent's purge ends no more than the pool's judgement allowed (`StuckJudgement.endable`).
    @Test func onlyTheSocketsAllowedAreCondemned() {
        let stuck = socket(unacked: 1, lastAck: 4000, backoff: 2, cookie: 5)
        #expect(StuckRule(afterMilliseconds: 3000, observedWaits: [5: 4000], onlyAmong: [5]).condemns(stuck))
        #expect(!StuckRule(afterMilliseconds: 3000, observedWaits: [5: 4000], onlyAmong: [6]).condemns(stuck))
        #expect(!StuckRule(afterMilliseconds: 3000, observedWaits: [5: 4000], onlyAmong: []).condemns(stuck))
        // Allowed is not condemned: acknowledged since the listing, it is spared.
        #expect(
            !StuckRule(afterMilliseconds: 3000, observedWaits: [5: 4000], onlyAmong: [5]).condemns(
                socket(unacked: 1, lastAck: 10, cookie: 5)))
    }

    /// A drop beyond the host: segments in flight, retransmitting (kernel-notes.md, ~14 s in). One
    /// look shows how long: retransmitted at 0.2, 0.6, 1.4, 3.0 and 6.2 s, the last 8.3 s ago.
    @Test func blackholedInFlightIsCondemned() {
        let blackholed = socket(unacked: 1, lastAck: 14_488, retransmits: 5, backoff: 5, timer: 1, rto: 6_400, lastSend: 8_288)
        #expect(StuckRule.kernelShowsWaited(blackholed) == 14_488)
        #expect(rule.condemns(blackholed))
    }

    /// A connection that writes every 6 s loses one segment: its ACK is 6.3 s old and it was
    /// retransmitted once, but its data has waited 0.3 s. Not condemned; the one-shot look, which
    /// takes a fired timer as evidence, does condemn it (`purge --stuck` says so).
    @Test func aSparseWritersOneLostSegmentIsNotStuck() {
        let lost = socket(unacked: 1, lastAck: 6_300, retransmits: 1, backoff: 1, timer: 1, rto: 400, lastSend: 100)
        #expect(StuckRule.kernelShowsWaited(lost) == 300)
        #expect(rule.isSuspicious(lost))
        #expect(!rule.condemns(lost))
        #expect(StuckRule(afterMilliseconds: 3000, firedTimerIsEvidence: true).condemns(lost))
    }

    /// A local OUTPUT DROP: nothing in flight, bytes queued, backoff growing. One look has no clock:
    /// condemned by the agent's scans that saw it wait, or by a one-shot's fired timer.
    @Test func blackholedLocallyIsCondemnedOnceSeenWaiting() {
        let dropped = socket(sendQueue: 9, lastAck: 3_200, backoff: 4, timer: 1)
        #expect(StuckRule.kernelShowsWaited(dropped) == 0)
        #expect(!rule.condemns(dropped))
        #expect(StuckRule(afterMilliseconds: 3000, observedWaits: [1: 3_000]).condemns(dropped))
        #expect(StuckRule(afterMilliseconds: 3000, firedTimerIsEvidence: true).condemns(dropped))
    }

    /// The trap: idle for a minute, then a write; the ACK is one RTT away. Suspicious, not condemned,
    /// unless the agent's scans saw this socket's data wait stuck_after.
    @Test func aFreshWriteAfterLongIdleNeedsItsDataSeenWaiting() {
        let justWrote = socket(sendQueue: 120, lastAck: 60_000, cookie: 7)
        #expect(rule.isSuspicious(justWrote))
        #expect(!rule.condemns(justWrote))
        #expect(!StuckRule(afterMilliseconds: 3000, firedTimerIsEvidence: true).condemns(justWrote))
        #expect(StuckRule(afterMilliseconds: 3000, observedWaits: [7: 3000]).condemns(justWrote))
        #expect(!StuckRule(afterMilliseconds: 3000, observedWaits: [7: 2999]).condemns(justWrote))
        #expect(!StuckRule(afterMilliseconds: 3000, observedWaits: [8: 5000]).condemns(justWrote))
    }

    @Test func idleAndAcknowledgedConnectionsAreNeverSuspicious() {
        #expect(!rule.isSuspicious(socket(lastAck: 600_000, backoff: 3)))  // idle, keepalive probing
        #expect(!rule.isSuspicious(socket(sendQueue: 5000, unacked: 10, lastAck: 20, retransmits: 1)))  // slow but ACKed
        #expect(!rule.isSuspicious(socket(state: .synSent, unacked: 1, lastAck: 5000, backoff: 3)))
        var udp = socket(sendQueue: 10, lastAck: 9000, backoff: 2)
        udp.transport = .udp
        #expect(!rule.isSuspicious(udp))
    }

    @Test func matcherAppliesTheRuleOnlyToItsDestinations() throws {
        let matcher = DestinationMatcher(
            destinations: [try Destination(parsing: "10.0.0.2:443")], transports: [.tcp], stuck: oneShot)
        #expect(matcher.socketQuery.includeTCPInfo)
        #expect(matcher.matches(socket(unacked: 1, lastAck: 4000, backoff: 2)))
        #expect(!matcher.matches(socket(unacked: 0, lastAck: 4000)))
        let elsewhere = DestinationMatcher(destinations: [try Destination(parsing: "10.0.0.3:443")], transports: [.tcp], stuck: oneShot)
        #expect(!elsewhere.matches(socket(unacked: 1, lastAck: 4000, backoff: 2)))
    }
}
