import NetworkAddress
import Reaper
import SockDiag
import Testing

@testable import Agent

@Suite struct StuckRuleTests {
    let rule = StuckRule(afterMilliseconds: 3000)

    func socket(
        state: SocketState = .established, sendQueue: UInt32 = 0, unacked: UInt32 = 0, lastAck: UInt32 = 0,
        retransmits: UInt8 = 0, backoff: UInt8 = 0, cookie: UInt64 = 1, timer: UInt8 = 0, probes: UInt8 = 0
    ) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: .tcp, state: state,
            id: SocketID(
                source: Endpoint(address: .v4(0x0A00_0001), port: 40000),
                destination: Endpoint(address: .v4(0x0A00_0002), port: 443), cookie: cookie),
            timer: timer, sendQueue: sendQueue,
            tcpInfo: TCPInfo(
                retransmits: retransmits, probes: probes, backoff: backoff, unacked: unacked, lastAckReceivedMilliseconds: lastAck))
    }

    /// A peer that shuts its window and acknowledges every window probe is alive, however long the
    /// window stays shut (the probes back off to two minutes, and the last ACK ages with them).
    @Test func aClosedWindowWhosePeerAnswersItsProbesIsAlive() {
        let answered = socket(sendQueue: 65_000, lastAck: 45_000, backoff: 6, cookie: 9, timer: 4, probes: 0)
        #expect(!rule.isSuspicious(answered))
        #expect(!StuckRule(afterMilliseconds: 3000, previouslySuspected: [9]).condemns(answered))
        // The other way: window probes go unanswered: the peer is gone.
        let unanswered = socket(sendQueue: 65_000, lastAck: 45_000, backoff: 6, cookie: 9, timer: 4, probes: 3)
        #expect(rule.condemns(unanswered))
    }

    /// The agent's purge ends no more than the pool's judgement allowed (`StuckJudgement.endable`).
    @Test func onlyTheSocketsAllowedAreCondemned() {
        let stuck = socket(unacked: 1, lastAck: 4000, backoff: 2, cookie: 5)
        #expect(StuckRule(afterMilliseconds: 3000, onlyAmong: [5]).condemns(stuck))
        #expect(!StuckRule(afterMilliseconds: 3000, onlyAmong: [6]).condemns(stuck))
        #expect(!StuckRule(afterMilliseconds: 3000, onlyAmong: []).condemns(stuck))
        // Allowed is not condemned: acknowledged since the listing, it is spared.
        #expect(!StuckRule(afterMilliseconds: 3000, onlyAmong: [5]).condemns(socket(unacked: 1, lastAck: 10, cookie: 5)))
    }

    /// A drop beyond the host: segments in flight, retransmitting (kernel-notes.md, ~14 s in).
    @Test func blackholedInFlightIsCondemned() {
        #expect(rule.condemns(socket(unacked: 1, lastAck: 14_488, retransmits: 5, backoff: 5)))
    }

    /// A local OUTPUT DROP: nothing in flight, bytes queued, backoff growing.
    @Test func blackholedLocallyIsCondemned() {
        #expect(rule.condemns(socket(sendQueue: 9, lastAck: 3_200, backoff: 4)))
    }

    /// The trap: idle for a minute, then a write; the ACK is one RTT away. Suspicious, not condemned,
    /// unless the same socket was already suspicious on the previous scan.
    @Test func aFreshWriteAfterLongIdleNeedsASecondScan() {
        let justWrote = socket(sendQueue: 120, lastAck: 60_000, cookie: 7)
        #expect(rule.isSuspicious(justWrote))
        #expect(!rule.condemns(justWrote))
        #expect(StuckRule(afterMilliseconds: 3000, previouslySuspected: [7]).condemns(justWrote))
        #expect(!StuckRule(afterMilliseconds: 3000, previouslySuspected: [8]).condemns(justWrote))
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
            destinations: [try Destination(parsing: "10.0.0.2:443")], transports: [.tcp], stuck: rule)
        #expect(matcher.socketQuery.includeTCPInfo)
        #expect(matcher.matches(socket(unacked: 1, lastAck: 4000, backoff: 2)))
        #expect(!matcher.matches(socket(unacked: 0, lastAck: 4000)))
        let elsewhere = DestinationMatcher(destinations: [try Destination(parsing: "10.0.0.3:443")], transports: [.tcp], stuck: rule)
        #expect(!elsewhere.matches(socket(unacked: 1, lastAck: 4000, backoff: 2)))
    }
}
